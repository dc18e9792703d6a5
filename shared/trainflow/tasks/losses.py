"""Loss functions for the supervised tasks, built from the `train.loss` config section.

Each builder checks the config once and returns `loss(outputs, targets) -> scalar tensor`
(the mean over the batch). Losses are computed in float32 whatever the model's precision.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable

import torch
from torch.nn import functional as F

from trainflow.config.training import LossConfig
from trainflow.errors import ConfigError, UserFacingError

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

CLASSIFICATION_LOSSES = ("cross_entropy", "focal", "custom")
REGRESSION_LOSSES = ("mse", "l1", "huber", "custom")
SEGMENTATION_LOSSES = ("cross_entropy_dice", "cross_entropy", "custom")
DICE_EPSILON = 1e-6


def classification_loss(cfg: LossConfig, train_labels: torch.Tensor, num_classes: int) -> LossFunction:
    """Loss on logits (N, K) and class indices (N,): cross_entropy (default), focal or custom.

    `train_labels` (the train split's class indices) give the 'balanced' class weights, N / (K · n_c).
    Raises ConfigError naming the train.loss field that does not fit.
    """
    name = _loss_name(cfg, "classification", CLASSIFICATION_LOSSES)
    if name == "custom":
        return load_custom_loss(cfg.custom)
    _reject_target_weights(cfg, "classification")
    weights = _class_weights(cfg, lambda: _label_counts(train_labels, num_classes), num_classes)
    if name == "focal":
        if cfg.label_smoothing:
            raise ConfigError("train.loss.label_smoothing: applies to cross_entropy only, not focal; set it to 0")
        return functools.partial(softmax_focal_loss, gamma=cfg.focal_gamma, class_weights=weights)
    return functools.partial(_cross_entropy, class_weights=weights, label_smoothing=cfg.label_smoothing)


def regression_loss(cfg: LossConfig, num_targets: int) -> LossFunction:
    """Loss on predictions (N, T) and targets (N, T) (or (N,) when T = 1): mse (default), l1, huber or custom.

    Each target's loss is its mean over the batch; with train.loss.target_weights the result is the
    weighted mean Σ w_t·L_t / Σ w_t (so the weights' scale does not change the learning rate), else the
    plain mean over targets. Raises ConfigError naming the train.loss field that does not fit.
    """
    name = _loss_name(cfg, "regression", REGRESSION_LOSSES)
    if name == "custom":
        return load_custom_loss(cfg.custom)
    if cfg.class_weights is not None:
        raise ConfigError("train.loss.class_weights: applies to classification and segmentation, not regression; "
                          "use train.loss.target_weights")
    if cfg.label_smoothing:
        raise ConfigError("train.loss.label_smoothing: applies to cross-entropy, not regression; set it to 0")
    weights = None
    if cfg.target_weights is not None:
        weights = _checked_weights(cfg.target_weights, num_targets, "train.loss.target_weights", "targets")
    elementwise = {"mse": F.mse_loss, "l1": F.l1_loss,
                   "huber": functools.partial(F.huber_loss, delta=cfg.huber_delta)}[name]
    return functools.partial(_per_target_loss, elementwise=elementwise, target_weights=weights)


def segmentation_loss(cfg: LossConfig, train_class_counts: torch.Tensor | None, num_classes: int) -> LossFunction:
    """Loss on logits (N, K, H, W) and masks (N, H, W): cross_entropy_dice (default), cross_entropy or custom.

    cross_entropy_dice = cross-entropy (with class weights) + train.loss.dice_weight × soft Dice loss.
    `train_class_counts` (pixels per class in the train split, length K) give 'balanced' class weights.
    Raises ConfigError naming the train.loss field that does not fit.
    """
    name = _loss_name(cfg, "segmentation", SEGMENTATION_LOSSES)
    if name == "custom":
        return load_custom_loss(cfg.custom)
    _reject_target_weights(cfg, "segmentation")

    def counts() -> torch.Tensor:
        if train_class_counts is None:
            raise ConfigError("train.loss.class_weights: 'balanced' needs the train split's pixel counts per class, "
                              "which this run does not provide; give one weight per class instead")
        if len(train_class_counts) != num_classes:
            raise UserFacingError(f"train split pixel counts cover {len(train_class_counts)} classes, not {num_classes}")
        return torch.as_tensor(train_class_counts, dtype=torch.float64)

    cross_entropy = functools.partial(_cross_entropy, class_weights=_class_weights(cfg, counts, num_classes),
                                      label_smoothing=cfg.label_smoothing)
    if name == "cross_entropy":
        return cross_entropy
    return functools.partial(_cross_entropy_dice, cross_entropy=cross_entropy, dice_weight=cfg.dice_weight)


def softmax_focal_loss(logits: torch.Tensor, labels: torch.Tensor, *, gamma: float,
                       class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of -α_y (1 - p_y)^γ log p_y over the batch (weighted mean when α is given, as cross_entropy does).

    logits (N, K, ...) and labels (N, ...); γ = 0 is cross-entropy.
    """
    # Written here because torchvision's sigmoid_focal_loss treats every class as an independent
    # binary label; our classes are exclusive, so the focal factor goes on the softmax of the true class.
    log_p_true = F.log_softmax(logits.float(), dim=1).gather(1, labels.long().unsqueeze(1)).squeeze(1)
    focal = -((1 - log_p_true.exp()) ** gamma) * log_p_true
    if class_weights is None:
        return focal.mean()
    alpha = class_weights.to(focal.device)[labels.long()]
    return (alpha * focal).sum() / alpha.sum()


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 − mean over the classes present in `masks` of 2|P∩G| / (|P| + |G|), P = softmax(logits), G = one-hot.

    Sums run over the whole batch (N, H, W); logits (N, K, H, W), masks (N, H, W) of class indices.
    """
    # Written here because torchmetrics' Dice is a metric on hard labels, with no gradient through softmax.
    probabilities = F.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(masks.long(), probabilities.shape[1]).movedim(-1, 1).to(probabilities.dtype)
    summed_dims = [0, *range(2, probabilities.ndim)]
    intersection = (probabilities * one_hot).sum(summed_dims)
    truth = one_hot.sum(summed_dims)
    dice = 2 * intersection / (probabilities.sum(summed_dims) + truth + DICE_EPSILON)
    present = (truth > 0).to(dice.dtype)  # a mask, not indexing, so no device sync
    return 1 - (dice * present).sum() / present.sum().clamp(min=1)


def load_custom_loss(reference: str | None) -> LossFunction:
    """Import train.loss.custom, 'package.module:function' (function taking (outputs, targets) → scalar tensor).

    Raises ConfigError naming train.loss.custom when it cannot be imported, the attribute is missing or not
    callable; the returned loss raises UserFacingError if the function returns anything but a scalar tensor.
    """
    module_name, _, attribute = (reference or "").partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"train.loss.custom: {reference!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a user's module may fail to import in any way; all are theirs to fix
        raise ConfigError(f"train.loss.custom: cannot import {module_name!r} ({type(error).__name__}: {error}); "
                          "install it or put its folder on PYTHONPATH") from error
    function: object = module
    for part in attribute.split("."):
        if not hasattr(function, part):
            raise ConfigError(f"train.loss.custom: {module_name!r} has no attribute {attribute!r}")
        function = getattr(function, part)
    if not callable(function):
        raise ConfigError(f"train.loss.custom: {reference} is a {type(function).__name__}, not a function")
    return functools.partial(_checked_custom_loss, function=function, reference=reference)


def _checked_custom_loss(outputs: torch.Tensor, targets: torch.Tensor, *, function: Callable,
                         reference: str) -> torch.Tensor:
    loss = function(outputs, targets)
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise UserFacingError(f"train.loss.custom: {reference} returned {shape}; it must return a scalar tensor")
    return loss


def _loss_name(cfg: LossConfig, task: str, allowed: tuple[str, ...]) -> str:
    name = cfg.name or allowed[0]
    if name not in allowed:
        raise ConfigError(f"train.loss.name: {name} does not fit a {task} task; use {', '.join(allowed)}")
    return name


def _reject_target_weights(cfg: LossConfig, task: str) -> None:
    if cfg.target_weights is not None:
        raise ConfigError(f"train.loss.target_weights: applies to regression, not {task}; use train.loss.class_weights")


def _label_counts(train_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    labels = torch.as_tensor(train_labels).flatten().long().cpu()
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserFacingError(f"train labels range over {int(labels.min())}..{int(labels.max())}, "
                              f"outside the {num_classes} classes 0..{num_classes - 1}")
    return torch.bincount(labels, minlength=num_classes).double()


def _class_weights(cfg: LossConfig, counts: Callable[[], torch.Tensor], num_classes: int) -> torch.Tensor | None:
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "balanced":
        per_class = counts()
        # A class absent from the train split counts as seen once: a finite weight that never fires in training.
        return (per_class.sum() / (num_classes * per_class.clamp(min=1))).float()
    return _checked_weights(cfg.class_weights, num_classes, "train.loss.class_weights", "classes")


def _checked_weights(values: list[float], expected: int, field: str, what: str) -> torch.Tensor:
    if len(values) != expected:
        raise ConfigError(f"{field}: {len(values)} weights given for {expected} {what}; give exactly one per {what[:-1]}")
    if min(values) < 0 or sum(values) <= 0:
        raise ConfigError(f"{field}: weights must be non-negative with a positive sum (got {values})")
    return torch.tensor(values, dtype=torch.float32)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, class_weights: torch.Tensor | None,
                   label_smoothing: float) -> torch.Tensor:
    weight = None if class_weights is None else class_weights.to(logits.device)
    return F.cross_entropy(logits.float(), labels.long(), weight=weight, label_smoothing=label_smoothing)


def _per_target_loss(predictions: torch.Tensor, targets: torch.Tensor, *, elementwise: Callable,
                     target_weights: torch.Tensor | None) -> torch.Tensor:
    predictions = predictions.float()
    if targets.shape != predictions.shape and targets.numel() == predictions.numel():
        targets = targets.reshape(predictions.shape)  # (N,) targets for a (N, 1) single-target model
    per_element = elementwise(predictions, targets.float(), reduction="none")
    per_target = per_element.reshape(per_element.shape[0], -1).mean(dim=0)
    if target_weights is None:
        return per_target.mean()
    weights = target_weights.to(per_target.device)
    return (weights * per_target).sum() / weights.sum()


def _cross_entropy_dice(logits: torch.Tensor, masks: torch.Tensor, *, cross_entropy: LossFunction,
                        dice_weight: float) -> torch.Tensor:
    return cross_entropy(logits, masks) + dice_weight * soft_dice_loss(logits, masks)
