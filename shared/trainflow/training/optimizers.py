"""Optimizers with parameter groups: no weight decay on norms and biases, learning rates per module."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from trainflow.config import OptimizerConfig
from trainflow.errors import ConfigError

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _no_decay_names(model: nn.Module) -> set[str]:
    """Biases and the weights of normalisation layers (decaying them only hurts)."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if param_name == "bias" or isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower():
                names.add(full)
    return names


def parameter_groups(model: nn.Module, cfg: OptimizerConfig, extra_lr: dict[str, float] | None = None) -> list[dict]:
    """Trainable parameters split by (learning rate, weight decay); each group records its `name`.

    `cfg.module_learning_rates` maps parameter-name prefixes to learning rates
    (longest prefix wins); a prefix that matches no trainable parameter is a
    ConfigError, since a typo would otherwise train with the default rate.
    """
    rates = {**cfg.module_learning_rates, **(extra_lr or {})}
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has no trainable parameters; check train.diffusion.lora / model settings")
    unused = [prefix for prefix in rates if not any(name == prefix or name.startswith(prefix + ".") for name, _ in trainable)]
    if unused:
        raise ConfigError(
            f"train.optimizer.module_learning_rates: no trainable parameter starts with {', '.join(map(repr, unused))}; "
            f"parameter names start like {', '.join(sorted({n.split('.')[0] for n, _ in trainable})[:8])}"
        )
    no_decay = _no_decay_names(model) if cfg.no_decay_on_norms_and_biases else set()
    groups: dict[tuple[float, float], dict] = {}
    for name, param in trainable:
        matches = [prefix for prefix in rates if name == prefix or name.startswith(prefix + ".")]
        lr = rates[max(matches, key=len)] if matches else cfg.learning_rate
        decay = 0.0 if name in no_decay else cfg.weight_decay
        key = (lr, decay)
        group = groups.setdefault(key, {"params": [], "lr": lr, "weight_decay": decay, "param_names": []})
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())


def build_optimizer(groups: Iterable[dict], cfg: OptimizerConfig, fused: bool = False,
                    eight_bit: bool = False) -> torch.optim.Optimizer:
    """The configured optimizer; `fused` (CUDA AdamW/Adam kernels) and `eight_bit` (bitsandbytes' AdamW8bit) come
    from train.speed through training.speed_options, which checks they can run here."""
    groups = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    if cfg.name == "adamw" and eight_bit:
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps)
    extra = {"fused": True} if fused else {}
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps, **extra)
    if cfg.name == "adam":
        # torch's Adam adds weight decay to the gradient (L2), unlike AdamW's decoupled decay.
        return torch.optim.Adam(groups, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps, **extra)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.RMSprop(groups, lr=cfg.learning_rate, momentum=cfg.momentum, eps=cfg.eps)
