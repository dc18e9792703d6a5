"""The supervised losses: values against torch's own functions and hand-computed cases, and config errors."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
from torch.nn import functional as F

from trainflow.config.training import LossConfig
from trainflow.errors import ConfigError, UserFacingError
from trainflow.tasks.losses import (
    classification_loss,
    regression_loss,
    segmentation_loss,
    soft_dice_loss,
    softmax_focal_loss,
)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(32, 4, generator=generator), torch.randint(0, 4, (32,), generator=generator)


# ---- classification -------------------------------------------------------------------------------

def test_cross_entropy_is_the_default_and_matches_torch(batch):
    logits, labels = batch
    loss = classification_loss(LossConfig(label_smoothing=0.1), labels, 4)
    assert loss(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item(), abs=1e-7)


def test_balanced_class_weights_are_inverse_frequency():
    train_labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)  # N = 10, K = 3
    expected = torch.tensor([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    logits, labels = torch.randn(10, 3), train_labels
    loss = classification_loss(LossConfig(class_weights="balanced"), train_labels, 3)
    assert loss(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels, weight=expected).item(), rel=1e-6)


def test_explicit_class_weights_must_match_the_class_count(batch):
    logits, labels = batch
    loss = classification_loss(LossConfig(class_weights=[1, 2, 3, 4]), labels, 4)
    weights = torch.tensor([1.0, 2, 3, 4])
    assert loss(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels, weight=weights).item(), rel=1e-6)
    with pytest.raises(ConfigError, match=r"^train\.loss\.class_weights: 3 weights given for 4 classes"):
        classification_loss(LossConfig(class_weights=[1, 2, 3]), labels, 4)


def test_focal_with_gamma_zero_is_cross_entropy(batch):
    logits, labels = batch
    # Equal up to float32 summation order (torch's nll_loss adds in another order: 1-2 ulp).
    exact = {"rtol": 1e-6, "atol": 0.0}
    focal = classification_loss(LossConfig(name="focal", focal_gamma=0.0), labels, 4)
    torch.testing.assert_close(focal(logits, labels), F.cross_entropy(logits, labels), **exact)
    weighted = classification_loss(LossConfig(name="focal", focal_gamma=0.0, class_weights=[1, 2, 3, 4]), labels, 4)
    reference = F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 2, 3, 4]))
    torch.testing.assert_close(weighted(logits, labels), reference, **exact)


def test_focal_down_weights_easy_examples():
    # Two-class logits giving p_true = 0.9 (easy) and 0.1 (hard): focal = (1 - p)^γ × cross-entropy.
    easy, hard = torch.tensor([[math.log(9.0), 0.0]]), torch.tensor([[0.0, math.log(9.0)]])
    label = torch.tensor([0])
    for logits, p_true in ((easy, 0.9), (hard, 0.1)):
        ratio = softmax_focal_loss(logits, label, gamma=2.0) / F.cross_entropy(logits, label)
        assert ratio.item() == pytest.approx((1 - p_true) ** 2, rel=1e-5)
    # In a mixed batch the easy example's share of the loss shrinks from CE's to almost nothing.
    both, labels = torch.cat([easy, hard]), torch.tensor([0, 0])
    per_example_ce = F.cross_entropy(both, labels, reduction="none")
    assert per_example_ce[0] / per_example_ce.sum() > 0.04
    focal_easy = softmax_focal_loss(easy, label, gamma=2.0)
    assert focal_easy / (2 * softmax_focal_loss(both, labels, gamma=2.0)) < 0.001


def test_focal_refuses_label_smoothing_and_regression_names(batch):
    _, labels = batch
    with pytest.raises(ConfigError, match=r"^train\.loss\.label_smoothing:"):
        classification_loss(LossConfig(name="focal", label_smoothing=0.1), labels, 4)
    with pytest.raises(ConfigError, match=r"^train\.loss\.name: mse does not fit a classification task"):
        classification_loss(LossConfig(name="mse"), labels, 4)


def test_labels_outside_the_classes_are_a_clear_error():
    with pytest.raises(UserFacingError, match="outside the 3 classes"):
        classification_loss(LossConfig(class_weights="balanced"), torch.tensor([0, 1, 5]), 3)


# ---- regression -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "reference"), [
    ("mse", F.mse_loss), ("l1", F.l1_loss), ("huber", lambda p, t: F.huber_loss(p, t, delta=0.5)),
])
def test_regression_losses_match_torch(name, reference):
    predictions, targets = torch.randn(16, 3) * 2, torch.randn(16, 3)
    loss = regression_loss(LossConfig(name=name, huber_delta=0.5), 3)
    assert loss(predictions, targets).item() == pytest.approx(reference(predictions, targets).item(), rel=1e-6)


def test_regression_default_is_mse_and_takes_single_column_targets():
    predictions, targets = torch.randn(8, 1), torch.randn(8)
    loss = regression_loss(LossConfig(), 1)
    assert loss(predictions, targets).item() == pytest.approx(F.mse_loss(predictions.squeeze(1), targets).item(), rel=1e-6)


def test_target_weights_give_a_weighted_mean_of_per_target_losses():
    predictions = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    targets = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    # Per-target MSE: target 0 = (1 + 9) / 2 = 5, target 1 = (4 + 4) / 2 = 4; weights 3 and 1: (15 + 4) / 4.
    loss = regression_loss(LossConfig(target_weights=[3.0, 1.0]), 2)
    assert loss(predictions, targets).item() == pytest.approx(19 / 4)
    l1 = regression_loss(LossConfig(name="l1", target_weights=[3.0, 1.0]), 2)
    assert l1(predictions, targets).item() == pytest.approx((3 * 2 + 1 * 2) / 4)  # per-target L1: 2 and 2


def test_regression_config_errors():
    with pytest.raises(ConfigError, match=r"^train\.loss\.target_weights: 3 weights given for 2 targets"):
        regression_loss(LossConfig(target_weights=[1, 1, 1]), 2)
    with pytest.raises(ConfigError, match=r"^train\.loss\.name: focal does not fit a regression task"):
        regression_loss(LossConfig(name="focal"), 2)
    with pytest.raises(ConfigError, match=r"^train\.loss\.class_weights:"):
        regression_loss(LossConfig(class_weights="balanced"), 2)


# ---- segmentation ---------------------------------------------------------------------------------

def test_dice_of_perfect_logits_is_about_zero():
    masks = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    logits = 30.0 * F.one_hot(masks, 3).movedim(-1, 1).float()
    assert soft_dice_loss(logits, masks).item() == pytest.approx(0.0, abs=1e-5)


def test_dice_of_uniform_logits_has_the_known_value():
    # Uniform p = 1/K: class c with n_c of M pixels has Dice 2(n_c/K) / (M/K + n_c) = 2 n_c / (M + K n_c).
    masks = torch.zeros(1, 4, 4, dtype=torch.long)
    masks[0, :, :1] = 1  # 4 pixels of class 1, 12 of class 0, class 2 absent (not averaged)
    logits = torch.zeros(1, 3, 4, 4)
    expected = 1 - (2 * 12 / (16 + 3 * 12) + 2 * 4 / (16 + 3 * 4)) / 2
    assert soft_dice_loss(logits, masks).item() == pytest.approx(expected, rel=1e-5)


def test_cross_entropy_dice_adds_the_weighted_dice_term():
    generator = torch.Generator().manual_seed(2)
    logits, masks = torch.randn(2, 3, 8, 8, generator=generator), torch.randint(0, 3, (2, 8, 8), generator=generator)
    counts = torch.bincount(masks.flatten(), minlength=3)
    loss = segmentation_loss(LossConfig(dice_weight=0.5, class_weights="balanced"), counts, 3)
    weights = counts.sum() / (3 * counts.double())
    expected = F.cross_entropy(logits, masks, weight=weights.float()) + 0.5 * soft_dice_loss(logits, masks)
    assert loss(logits, masks).item() == pytest.approx(expected.item(), rel=1e-6)
    plain = segmentation_loss(LossConfig(name="cross_entropy"), None, 3)
    assert plain(logits, masks).item() == pytest.approx(F.cross_entropy(logits, masks).item(), rel=1e-6)


def test_segmentation_config_errors():
    with pytest.raises(ConfigError, match=r"^train\.loss\.class_weights: 'balanced' needs"):
        segmentation_loss(LossConfig(class_weights="balanced"), None, 3)
    with pytest.raises(ConfigError, match=r"^train\.loss\.name: huber does not fit a segmentation task"):
        segmentation_loss(LossConfig(name="huber"), None, 3)


# ---- custom ---------------------------------------------------------------------------------------

@pytest.fixture
def custom_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "my_losses.py").write_text(textwrap.dedent("""
        import torch
        NOT_A_FUNCTION = 3
        def doubled_mse(outputs, targets):
            return 2 * torch.mean((outputs - targets) ** 2)
        def per_example(outputs, targets):
            return (outputs - targets) ** 2
    """))
    (tmp_path / "broken_losses.py").write_text("import not_a_real_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_losses"


def test_custom_loss_is_imported_and_called(custom_module):
    predictions, targets = torch.randn(5, 2), torch.randn(5, 2)
    for build in (lambda cfg: regression_loss(cfg, 2), lambda cfg: classification_loss(cfg, torch.tensor([0]), 2)):
        loss = build(LossConfig(name="custom", custom=f"{custom_module}:doubled_mse"))
        assert loss(predictions, targets).item() == pytest.approx(2 * F.mse_loss(predictions, targets).item(), rel=1e-6)


@pytest.mark.parametrize(("reference", "reason"), [
    ("no_such_module_abc:loss", "cannot import 'no_such_module_abc'"),
    ("broken_losses:loss", "cannot import 'broken_losses' .*not_a_real_package_xyz"),
    ("my_losses:missing", "has no attribute 'missing'"),
    ("my_losses:NOT_A_FUNCTION", "is a int, not a function"),
    ("my_losses.doubled_mse", "must look like 'package.module:function'"),
])
def test_custom_loss_errors_name_the_field_and_the_reason(custom_module, reference, reason):
    with pytest.raises(ConfigError, match=rf"^train\.loss\.custom: .*{reason}"):
        regression_loss(LossConfig(name="custom", custom=reference), 1)


def test_custom_loss_must_return_a_scalar(custom_module):
    loss = regression_loss(LossConfig(name="custom", custom="my_losses:per_example"), 2)
    with pytest.raises(UserFacingError, match=r"returned a tensor of shape \(5, 2\); it must return a scalar tensor"):
        loss(torch.randn(5, 2), torch.randn(5, 2))
