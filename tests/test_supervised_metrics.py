"""Supervised metrics equal scikit-learn's on real models' outputs, and say why when a number is undefined."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_linnerud
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits
from torchmetrics.functional.classification import multiclass_confusion_matrix

from trainflow.errors import UserFacingError
from trainflow.metrics.metric_directions import is_lower_better
from trainflow.metrics.segmentation_metrics import per_image_confusion
from trainflow.metrics.supervised import classification_metrics, regression_metrics, segmentation_metrics

TOL = 1e-6


def fitted_probabilities(loader, test_size):
    features, labels = loader(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(features, labels, test_size=test_size, random_state=0, stratify=labels)
    scale = x_train.max(axis=0) + 1e-9
    with threadpool_limits(1):  # multi-threaded BLAS on a shared 2-core machine is ~100x slower here
        model = LogisticRegression(max_iter=3000).fit(x_train / scale, y_train)
    return model.predict_proba(x_test / scale), y_test


@pytest.fixture(scope="module")
def digits_outputs():
    return fitted_probabilities(load_digits, 300)


@pytest.fixture(scope="module")
def cancer_outputs():
    return fitted_probabilities(load_breast_cancer, 150)


def assert_matches_sklearn(result, probabilities, labels, names):
    predicted = probabilities.argmax(axis=1)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted), abs=TOL)
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = skm.precision_recall_fscore_support(labels, predicted, average=average, zero_division=0)
        assert result[f"precision_{average}"] == pytest.approx(precision, abs=TOL)
        assert result[f"recall_{average}"] == pytest.approx(recall, abs=TOL)
        assert result[f"f1_{average}"] == pytest.approx(f1, abs=TOL)
    present = np.union1d(labels, predicted)
    per_class = skm.precision_recall_fscore_support(labels, predicted, labels=present, average=None, zero_division=0)
    for position, index in enumerate(present):
        assert result[f"precision/{names[index]}"] == pytest.approx(per_class[0][position], abs=TOL)
        assert result[f"recall/{names[index]}"] == pytest.approx(per_class[1][position], abs=TOL)
        assert result[f"f1/{names[index]}"] == pytest.approx(per_class[2][position], abs=TOL)
    assert result["confusion_matrix"] == skm.confusion_matrix(labels, predicted, labels=range(len(names))).tolist()
    assert result["log_loss"] == pytest.approx(skm.log_loss(labels, probabilities, labels=range(len(names))), abs=TOL)


def test_multiclass_metrics_equal_sklearn_on_a_fitted_digits_model(digits_outputs):
    probabilities, labels = digits_outputs
    names = [f"digit{i}" for i in range(10)]
    result = classification_metrics(torch.from_numpy(probabilities), torch.from_numpy(labels), names)
    assert 0.9 < result["accuracy"] < 1.0  # a realistic model: neither chance nor perfect
    assert_matches_sklearn(result, probabilities, labels, names)
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"), abs=TOL)
    assert result["pr_auc"] == pytest.approx(skm.average_precision_score(labels, probabilities, average="macro"), abs=TOL)
    assert result["skipped"] == {}
    json.dumps(result)  # every value is JSON-able


def test_binary_metrics_use_the_positive_class(cancer_outputs):
    probabilities, labels = cancer_outputs
    names = ["malignant", "benign"]
    result = classification_metrics(torch.from_numpy(probabilities).float(), torch.from_numpy(labels), names)
    assert_matches_sklearn(result, probabilities, labels, names)
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probabilities[:, 1]), abs=TOL)
    assert result["pr_auc"] == pytest.approx(skm.average_precision_score(labels, probabilities[:, 1]), abs=TOL)
    # AP is not symmetric: scoring the wrong class would give a different number.
    assert abs(skm.average_precision_score(1 - labels, probabilities[:, 0]) - result["pr_auc"]) > 1e-4


def reference_ece(probabilities, labels, bins=15):
    """Top-label ECE written out independently: sum over bins of |accuracy - confidence| x share of records."""
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    total = 0.0
    for low, high in zip(np.linspace(0, 1, bins + 1)[:-1], np.linspace(0, 1, bins + 1)[1:]):
        inside = (confidence >= low) & ((confidence < high) if high < 1 else (confidence <= high))
        if inside.any():
            total += abs((predicted[inside] == labels[inside]).mean() - confidence[inside].mean()) * inside.mean()
    return total


def test_ece_is_top_label_with_15_equal_bins(digits_outputs, cancer_outputs):
    for probabilities, labels, classes in ((*digits_outputs, 10), (*cancer_outputs, 2)):
        result = classification_metrics(torch.from_numpy(probabilities), torch.from_numpy(labels), [str(c) for c in range(classes)])
        assert result["ece"] == pytest.approx(reference_ece(probabilities, labels), abs=TOL)
    # Hand-checked: two records at confidence 0.9, one right and one wrong -> |0.5 - 0.9| = 0.4.
    tiny = classification_metrics(torch.tensor([[0.9, 0.1], [0.9, 0.1]]), torch.tensor([0, 1]), ["a", "b"])
    assert tiny["ece"] == pytest.approx(0.4, abs=TOL)


def test_class_absent_from_labels_is_skipped_for_auc_and_scored_zero_when_predicted(digits_outputs):
    probabilities, labels = digits_outputs
    keep = labels != 8  # the model still predicts 8 for a few other digits
    probabilities, labels = probabilities[keep], labels[keep]
    assert (probabilities.argmax(axis=1) == 8).sum() > 0
    names = [str(i) for i in range(10)]
    result = classification_metrics(torch.from_numpy(probabilities), torch.from_numpy(labels), names)
    assert_matches_sklearn(result, probabilities, labels, names)
    assert result["precision/8"] == 0.0 and result["f1/8"] == 0.0  # sklearn's zero_division=0; counted in the macro
    assert "roc_auc/8" in result["skipped"] and "no positive records" in result["skipped"]["roc_auc/8"]
    others = [c for c in range(10) if c != 8]
    expected_auc = np.mean([skm.roc_auc_score(labels == c, probabilities[:, c]) for c in others])
    expected_ap = np.mean([skm.average_precision_score(labels == c, probabilities[:, c]) for c in others])
    assert result["roc_auc"] == pytest.approx(expected_auc, abs=TOL)
    assert result["pr_auc"] == pytest.approx(expected_ap, abs=TOL)


def test_class_absent_from_labels_and_predictions_has_no_scores_and_leaves_the_macro_average(digits_outputs):
    probabilities, labels = digits_outputs
    keep = labels != 3
    probabilities, labels = probabilities[keep].copy(), labels[keep]
    probabilities[:, 3] = 0.0  # the model never predicts class 3
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    names = [str(i) for i in range(10)]
    result = classification_metrics(torch.from_numpy(probabilities), torch.from_numpy(labels), names)
    assert "f1/3" not in result and "precision/3" not in result
    assert "absent from both" in result["skipped"]["f1/3"]
    assert_matches_sklearn(result, probabilities, labels, names)  # sklearn's default labels are the 9 seen classes


def test_single_class_labels_leave_auc_absent_with_a_reason():
    probabilities = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    result = classification_metrics(probabilities, torch.tensor([1, 1, 1]), ["no", "yes"])
    assert "roc_auc" not in result and "roc_auc" in result["skipped"]
    assert result["pr_auc"] == pytest.approx(1.0)  # AP with only positives is precision 1 at every threshold


@pytest.mark.parametrize(
    "probabilities, labels, names, message",
    [
        (torch.tensor([[2.0, -1.0], [0.5, 0.3]]), torch.tensor([0, 1]), ["a", "b"], "softmax"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([2]), ["a", "b"], "labels must lie in 0..1"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([0]), ["a", "b", "c"], "class_names must list 2"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([0, 1]), ["a", "b"], "as many labels"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([0.0]), ["a", "b"], "int64"),
    ],
)
def test_bad_classification_inputs_give_one_clear_sentence(probabilities, labels, names, message):
    with pytest.raises(UserFacingError, match=message):
        classification_metrics(probabilities, labels, names)


def fitted_regression(features, targets):
    x_train, x_test, y_train, y_test = train_test_split(features, targets, test_size=0.3, random_state=0)
    with threadpool_limits(1):
        return LinearRegression().fit(x_train, y_train).predict(x_test), y_test


def assert_regression_matches_sklearn(result, predictions, targets, names):
    references = {
        "mse": skm.mean_squared_error, "mae": skm.mean_absolute_error, "rmse": skm.root_mean_squared_error,
        "r2": skm.r2_score, "mape": skm.mean_absolute_percentage_error,
    }
    for metric, reference in references.items():
        per_target = reference(targets, predictions, multioutput="raw_values")
        for index, name in enumerate(names):
            assert result[f"{metric}/{name}"] == pytest.approx(per_target[index], rel=TOL, abs=TOL)
        assert result[metric] == pytest.approx(reference(targets, predictions, multioutput="uniform_average"), rel=TOL, abs=TOL)


def test_regression_metrics_equal_sklearn_on_diabetes_and_multi_target_linnerud():
    features, target = load_diabetes(return_X_y=True)
    predictions, targets = fitted_regression(features, target[:, None])
    result = regression_metrics(torch.from_numpy(predictions), torch.from_numpy(targets), ["progression"])
    assert 0.2 < result["r2"] < 0.9
    assert_regression_matches_sklearn(result, predictions, targets, ["progression"])
    assert result["skipped"] == {}

    features, targets = load_linnerud(return_X_y=True)
    predictions, targets = fitted_regression(features, targets)
    names = ["weight", "waist", "pulse"]
    result = regression_metrics(torch.from_numpy(predictions).float(), torch.from_numpy(targets).float(), names)
    assert_regression_matches_sklearn(result, predictions, targets, names)
    json.dumps(result)


def test_r2_stays_exact_on_small_scale_targets():
    # torchmetrics' r2_score returns 1.0 here (it treats sums of squares under 1e-4 as zero).
    features, target = load_diabetes(return_X_y=True)
    predictions, targets = fitted_regression(features, target[:, None] * 1e-4)
    result = regression_metrics(torch.from_numpy(predictions), torch.from_numpy(targets), ["scaled"])
    assert result["r2"] == pytest.approx(skm.r2_score(targets, predictions), rel=TOL)
    assert result["r2"] < 0.9


def test_undefined_regression_numbers_are_skipped_with_reasons():
    targets = torch.tensor([[3.0, 0.0], [3.0, 2.0], [3.0, 4.0]])
    predictions = torch.tensor([[2.5, 0.5], [3.5, 2.0], [3.0, 3.0]])
    result = regression_metrics(predictions, targets, ["constant", "has_zero"])
    assert "r2/constant" not in result and "same value" in result["skipped"]["r2/constant"]
    assert "mape/has_zero" not in result and "zero" in result["skipped"]["mape/has_zero"]
    assert "r2" not in result and "mape" not in result and "r2" in result["skipped"]
    assert result["r2/has_zero"] == pytest.approx(skm.r2_score(targets[:, 1], predictions[:, 1]))
    assert result["mse"] == pytest.approx(skm.mean_squared_error(targets, predictions))


def test_bad_regression_inputs_give_one_clear_sentence():
    with pytest.raises(UserFacingError, match="same non-empty shape"):
        regression_metrics(torch.zeros(4, 2), torch.zeros(4, 1), ["a"])
    with pytest.raises(UserFacingError, match="NaN"):
        regression_metrics(torch.tensor([[float("nan")]]), torch.zeros(1, 1), ["a"])
    with pytest.raises(UserFacingError, match="target_names must list 1"):
        regression_metrics(torch.zeros(4, 1), torch.ones(4, 1), ["a", "b"])


def digit_segmentation():
    """Masks from real scans (background / faint stroke / solid stroke) and a model that sees them through noise."""
    images = load_digits().images[:40]
    masks = np.digitize(images, [4, 11])
    rng = np.random.default_rng(0)
    predicted = np.digitize(images + rng.normal(0, 3, images.shape), [4, 11])
    return torch.from_numpy(predicted).long(), torch.from_numpy(masks).long()


def test_segmentation_metrics_equal_sklearn_on_flattened_pixels():
    predicted, masks = digit_segmentation()
    names = ["background", "faint", "stroke"]
    result = segmentation_metrics(predicted, masks, names)
    truth, guess = masks.reshape(-1).numpy(), predicted.reshape(-1).numpy()
    iou = skm.jaccard_score(truth, guess, average=None)
    dice = skm.f1_score(truth, guess, average=None)
    for index, name in enumerate(names):
        assert result[f"iou/{name}"] == pytest.approx(iou[index], abs=TOL)
        assert result[f"dice/{name}"] == pytest.approx(dice[index], abs=TOL)
    assert result["mean_iou"] == pytest.approx(skm.jaccard_score(truth, guess, average="macro"), abs=TOL)
    assert result["mean_dice"] == pytest.approx(skm.f1_score(truth, guess, average="macro"), abs=TOL)
    assert result["pixel_accuracy"] == pytest.approx(skm.accuracy_score(truth, guess), abs=TOL)
    assert 0.3 < result["mean_iou"] < 0.95
    cells = per_image_confusion(predicted, masks, 3).sum(dim=0)
    assert torch.equal(cells, multiclass_confusion_matrix(predicted.reshape(-1), masks.reshape(-1), 3))


def test_segmentation_ignores_pixels_and_excludes_classes_seen_nowhere():
    predicted, masks = digit_segmentation()
    masks = masks.clone()
    masks[:, :2, :] = 255  # unlabelled border rows
    names = ["background", "faint", "stroke", "never"]
    result = segmentation_metrics(predicted, masks, names, ignore_index=255)
    keep = masks.reshape(-1) != 255
    truth, guess = masks.reshape(-1)[keep].numpy(), predicted.reshape(-1)[keep].numpy()
    assert result["mean_iou"] == pytest.approx(skm.jaccard_score(truth, guess, average="macro"), abs=TOL)
    assert result["pixel_accuracy"] == pytest.approx(skm.accuracy_score(truth, guess), abs=TOL)
    assert "iou/never" not in result and "neither" in result["skipped"]["iou/never"]


def test_segmentation_pools_pixels_over_the_dataset_rather_than_averaging_images():
    # Image 1: class 1 covers 1 pixel and is missed (IoU 0); image 2: class 1 covers 8 pixels, all found (IoU 1).
    masks = torch.zeros(2, 3, 3, dtype=torch.long)
    masks[0, 0, 0] = 1
    masks[1, :, :] = 1
    masks[1, 2, 2] = 0
    predicted = masks.clone()
    predicted[0, 0, 0] = 0
    result = segmentation_metrics(predicted, masks, ["background", "thing"])
    assert result["iou/thing"] == pytest.approx(8 / 9)  # pooled; the mean of per-image IoUs would be 0.5


def test_bad_segmentation_inputs_give_one_clear_sentence():
    masks = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(UserFacingError, match="ignore_index"):
        segmentation_metrics(masks, masks + 255, ["a", "b"])
    with pytest.raises(UserFacingError, match="predicted class indices"):
        segmentation_metrics(masks + 5, masks, ["a", "b"])
    with pytest.raises(UserFacingError, match="int64"):
        segmentation_metrics(masks.float(), masks, ["a", "b"])


@pytest.mark.parametrize(
    "name, lower",
    [
        ("loss", True), ("val_loss", True), ("test_loss", True), ("base_test_loss", True), ("best_val_loss", True),
        ("fid", True), ("base_kid", True), ("rmse/price", True), ("mape", True), ("log_loss", True), ("ece", True),
        ("lpips", True), ("lpips_diversity", False), ("accuracy", False), ("test_f1_macro", False),
        ("f1/cat", False), ("precision_weighted", False), ("recall/dog", False), ("roc_auc", False),
        ("pr_auc", False), ("r2", False), ("mean_iou", False), ("iou/road", False), ("dice/sky", False),
        ("pixel_accuracy", False), ("clip_score", False), ("base_prompt_accuracy", False), ("psnr", False), ("ssim", False),
    ],
)
def test_metric_directions(name, lower):
    assert is_lower_better(name) is lower


def test_unknown_metric_direction_is_refused_by_name():
    with pytest.raises(UserFacingError, match="'val_wer'"):
        is_lower_better("val_wer")
    with pytest.raises(UserFacingError, match="'best_epoch'"):
        is_lower_better("best_epoch")
