"""Bootstrap intervals and paired comparisons: exact per resample, reproducible, and right about which model is better."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from trainflow.errors import UserFacingError
from trainflow.metrics.classification_metrics import resampled_classification_metrics
from trainflow.metrics.regression_metrics import resampled_regression_metrics
from trainflow.metrics.segmentation_metrics import resampled_segmentation_metrics
from trainflow.metrics.supervised import (
    bootstrap_intervals,
    classification_metrics,
    paired_bootstrap,
    regression_metrics,
    resample_indices,
    segmentation_metrics,
)

NAMES = [f"digit{i}" for i in range(10)]
CLASSIFICATION_KEYS = [
    "accuracy", "f1_macro", "precision_macro", "recall_weighted", "f1_weighted", "f1/digit8", "recall/digit3",
    "roc_auc", "pr_auc", "ece", "log_loss",
]


@pytest.fixture(scope="module")
def digits_models():
    """Probabilities of a good and a deliberately weak classifier on the same 300 test digits."""
    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(features / 16, labels, test_size=300, random_state=0, stratify=labels)
    with threadpool_limits(1):  # multi-threaded BLAS on a shared 2-core machine is ~100x slower here
        good = LogisticRegression(max_iter=3000).fit(x_train, y_train).predict_proba(x_test)
        weak = LogisticRegression(max_iter=3000).fit(x_train[:, ::8], y_train).predict_proba(x_test[:, ::8])
    labels = torch.from_numpy(y_test)
    return {"probabilities": torch.from_numpy(good), "labels": labels}, {"probabilities": torch.from_numpy(weak), "labels": labels}


def counts_for(indices: np.ndarray) -> torch.Tensor:
    records = indices.shape[1]
    return torch.stack([torch.bincount(torch.from_numpy(row), minlength=records) for row in indices]).to(torch.float64)


def assert_resampled_equal_recomputed(resampled_fn, metric_fn, arrays, keys, resamples=10):
    """Scoring resamples from sufficient statistics gives what recomputing the metric on each resample gives."""
    indices = resample_indices(next(iter(arrays.values())).shape[0], resamples, seed=3)
    fast = resampled_fn(**arrays, counts=counts_for(indices), keys=keys)
    assert set(fast) == set(keys)
    for row, chosen in enumerate(indices):
        recomputed = metric_fn(**{name: tensor[torch.from_numpy(chosen)] for name, tensor in arrays.items()})
        for key in keys:
            if key in recomputed:
                assert fast[key][row].item() == pytest.approx(recomputed[key], abs=1e-6), (key, row)
            else:
                assert np.isnan(fast[key][row].item()), (key, row)


def test_resampled_classification_equals_recomputing_each_resample(digits_models):
    good, _ = digits_models
    assert_resampled_equal_recomputed(
        functools.partial(resampled_classification_metrics, class_names=NAMES),
        functools.partial(classification_metrics, class_names=NAMES), good, CLASSIFICATION_KEYS,
    )


def test_resampled_classification_handles_ties_and_classes_missing_from_a_resample():
    # Rounded probabilities give many tied scores. Class c is one record, the only one predicted as c,
    # so a third of the resamples have c in neither labels nor predictions and must leave it out of the macro F1.
    rng = np.random.default_rng(1)
    labels = torch.from_numpy(np.r_[rng.integers(0, 2, 39), 2])
    raw = rng.dirichlet([1, 1, 1], size=40).round(1) + 1e-3
    raw[:, 2] = np.minimum(raw[:, 2], raw[:, :2].max(axis=1) / 2)
    raw[-1] = [0.2, 0.2, 0.6]
    probabilities = torch.from_numpy(raw / raw.sum(axis=1, keepdims=True))
    names = ["a", "b", "c"]
    assert_resampled_equal_recomputed(
        functools.partial(resampled_classification_metrics, class_names=names),
        functools.partial(classification_metrics, class_names=names),
        {"probabilities": probabilities, "labels": labels}, ["roc_auc", "pr_auc", "f1_macro", "f1/c", "ece"], resamples=30,
    )


def test_resampled_regression_equals_recomputing_each_resample():
    features, target = load_diabetes(return_X_y=True)
    targets = np.c_[target, features[:, 2] * 100 + 50]  # two targets of different scales
    with threadpool_limits(1):
        predictions = LinearRegression().fit(features[:300], targets[:300]).predict(features[300:])
    arrays = {"predictions": torch.from_numpy(predictions), "targets": torch.from_numpy(targets[300:])}
    names = ["progression", "bmi_scaled"]
    keys = ["mse", "mae", "rmse", "r2", "mape", "r2/bmi_scaled", "rmse/progression"]
    assert_resampled_equal_recomputed(
        functools.partial(resampled_regression_metrics, target_names=names),
        functools.partial(regression_metrics, target_names=names), arrays, keys,
    )


def digit_segmentation():
    images = load_digits().images[:30]
    predicted = np.digitize(images + np.random.default_rng(0).normal(0, 3, images.shape), [4, 11])
    return {"predicted": torch.from_numpy(predicted).long(), "masks": torch.from_numpy(np.digitize(images, [4, 11])).long()}


def test_resampled_segmentation_resamples_whole_images():
    arrays = digit_segmentation()
    names = ["background", "faint", "stroke"]
    assert_resampled_equal_recomputed(
        functools.partial(resampled_segmentation_metrics, class_names=names),
        functools.partial(segmentation_metrics, class_names=names), arrays,
        ["mean_iou", "mean_dice", "pixel_accuracy", "iou/faint"],
    )


def test_intervals_are_reproducible_and_the_fast_path_agrees_with_recomputation(digits_models):
    good, _ = digits_models
    metric = functools.partial(classification_metrics, class_names=NAMES)
    keys = ["accuracy", "f1_macro", "roc_auc"]
    first = bootstrap_intervals(metric, good, keys, n_resamples=300, seed=7)
    assert first == bootstrap_intervals(metric, good, keys, n_resamples=300, seed=7)
    assert first != bootstrap_intervals(metric, good, keys, n_resamples=300, seed=8)
    # A plain callable is recomputed per resample; same seed, same resamples, same interval.
    recomputed = bootstrap_intervals(lambda **arrays: metric(**arrays), good, keys, n_resamples=20, seed=7)
    fast = bootstrap_intervals(metric, good, keys, n_resamples=20, seed=7)
    for key in keys:
        assert recomputed[key] == pytest.approx(fast[key], abs=1e-6)
    json.dumps(first)


def test_accuracy_interval_brackets_the_estimate_with_the_binomial_width(digits_models):
    good, _ = digits_models
    full = classification_metrics(**good, class_names=NAMES)
    low, high = bootstrap_intervals(functools.partial(classification_metrics, class_names=NAMES), good, ["accuracy"], seed=0)["accuracy"]
    accuracy, records = full["accuracy"], good["labels"].shape[0]
    assert low < accuracy < high
    binomial_width = 2 * 1.96 * np.sqrt(accuracy * (1 - accuracy) / records)
    assert 0.7 * binomial_width < high - low < 1.3 * binomial_width


def test_paired_bootstrap_finds_the_clearly_better_model(digits_models):
    good, weak = digits_models
    metric = functools.partial(classification_metrics, class_names=NAMES)
    result = paired_bootstrap(metric, good, weak, "accuracy", seed=0)
    assert result["difference"] == pytest.approx(metric(**good)["accuracy"] - metric(**weak)["accuracy"])
    assert 0 < result["low"] < result["difference"] < result["high"]
    assert result["p_better"] > 0.99
    # Lower is better for log loss: the good model's difference is negative and it still wins.
    loss = paired_bootstrap(metric, good, weak, "log_loss", seed=0)
    assert loss["high"] < 0 and loss["p_better"] > 0.99 and loss["lower_is_better"]
    reverse = paired_bootstrap(metric, weak, good, "accuracy", seed=0)
    assert reverse["high"] < 0 and reverse["p_better"] < 0.01
    json.dumps(result)


def test_paired_bootstrap_of_identical_models_is_exactly_zero(digits_models):
    good, _ = digits_models
    metric = functools.partial(classification_metrics, class_names=NAMES)
    copy = {name: tensor.clone() for name, tensor in good.items()}
    result = paired_bootstrap(metric, good, copy, "f1_macro", n_resamples=500, seed=0)
    assert (result["difference"], result["low"], result["high"], result["p_better"]) == (0.0, 0.0, 0.0, 0.0)


def test_paired_bootstrap_on_segmentation_images():
    arrays = digit_segmentation()
    noisier = {"predicted": torch.from_numpy(np.digitize(load_digits().images[:30] + np.random.default_rng(1).normal(0, 6, (30, 8, 8)), [4, 11])).long(), "masks": arrays["masks"]}
    result = paired_bootstrap(functools.partial(segmentation_metrics, class_names=["bg", "faint", "stroke"]), arrays, noisier, "mean_iou", seed=0)
    assert result["low"] > 0 and result["p_better"] > 0.95


def test_bootstrap_refuses_what_it_cannot_interval(digits_models):
    good, weak = digits_models
    metric = functools.partial(classification_metrics, class_names=NAMES)
    with pytest.raises(UserFacingError, match="cannot bootstrap 'auc'"):
        bootstrap_intervals(metric, good, ["auc"])
    with pytest.raises(UserFacingError, match="same non-zero number of records"):
        bootstrap_intervals(metric, {"probabilities": good["probabilities"], "labels": good["labels"][:10]}, ["accuracy"])
    with pytest.raises(UserFacingError, match="same records"):
        paired_bootstrap(metric, good, {name: tensor[:100] for name, tensor in weak.items()}, "accuracy")
    with pytest.raises(UserFacingError, match="'confusion_matrix'"):
        paired_bootstrap(metric, good, weak, "confusion_matrix")
    # R² of 4 records with two distinct targets is undefined whenever a resample draws one value only.
    tiny = {"predictions": torch.tensor([[1.0], [2.0], [1.5], [2.5]]), "targets": torch.tensor([[1.0], [1.0], [2.0], [2.0]])}
    with pytest.raises(UserFacingError, match="undefined in .* of 200 bootstrap resamples"):
        bootstrap_intervals(functools.partial(regression_metrics, target_names=["y"]), tiny, ["r2"], n_resamples=200)
