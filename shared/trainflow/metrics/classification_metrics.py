"""Classification metrics from predicted probabilities, equal to scikit-learn's.

`classification_metrics` computes every number once on the full test split,
through torchmetrics. `resampled_classification_metrics` computes the same
numbers for many bootstrap resamples at once from per-record sufficient
statistics (confusion-matrix cells, calibration bins, per-record log loss,
rank groups); the bootstrap uses it so 1,000 resamples take milliseconds.

Conventions (the same as scikit-learn's with `zero_division=0` and default labels):
- precision of a class never predicted, and recall of a class absent from the
  labels, are 0;
- a class absent from both the labels and the predictions has no per-class
  scores (listed under `skipped`) and is left out of the macro averages, as
  scikit-learn does when `labels` is not given (torchmetrics does the same);
- ROC-AUC and PR-AUC of a class with no positive records (or, for ROC-AUC, no
  negative ones) are undefined: that class is skipped with a note and the macro
  average is over the remaining classes; if none remain, the metric is absent.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_average_precision,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from trainflow.errors import UserFacingError

ECE_BINS = 15
PROBABILITY_SUM_TOLERANCE = 1e-4  # float32 softmax rows sum to 1 within ~1e-6


def check_classification_inputs(probabilities: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> torch.Tensor:
    """Validate the inputs and return the probabilities as float64.

    Raises UserFacingError (one sentence, naming the input) on wrong shapes, a class
    count that differs from `class_names`, labels outside 0..C-1, non-finite values,
    or rows that are not probabilities (logits must go through softmax first).
    """
    if not isinstance(probabilities, torch.Tensor) or probabilities.ndim != 2:
        raise UserFacingError("classification probabilities must be a tensor of shape (records, classes)")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.dtype != torch.int64:
        raise UserFacingError("classification labels must be a 1-D int64 tensor of class indices")
    records, classes = probabilities.shape
    if records == 0 or labels.shape[0] != records:
        raise UserFacingError(f"classification metrics need as many labels as probability rows (at least one); got {labels.shape[0]} labels and {records} rows")
    if len(class_names) != classes or len(set(class_names)) != classes or classes < 2:
        raise UserFacingError(f"class_names must list {classes} distinct names, one per probability column (at least 2); got {len(class_names)}")
    if labels.min().item() < 0 or labels.max().item() >= classes:
        raise UserFacingError(f"classification labels must lie in 0..{classes - 1}; got values from {labels.min().item()} to {labels.max().item()}")
    probabilities = probabilities.detach().to(torch.float64)
    if not torch.isfinite(probabilities).all():
        raise UserFacingError("classification probabilities contain NaN or infinite values")
    sums = probabilities.sum(dim=1)
    if probabilities.min() < 0 or probabilities.max() > 1 or (sums - 1).abs().max() > PROBABILITY_SUM_TOLERANCE:
        raise UserFacingError(
            f"classification probabilities must be in [0, 1] with rows summing to 1 (row sums range {sums.min().item():.4g}..{sums.max().item():.4g}); "
            "apply torch.softmax(logits, dim=1) first"
        )
    return probabilities


def classification_metrics(probabilities: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Every classification metric trainflow reports, as JSON-able Python values.

    Inputs: `probabilities` (N, C) on CPU, rows summing to 1; `labels` (N,) int64
    in 0..C-1; `class_names`, C names in column order. The prediction is the
    arg-max class.
    Output keys: `accuracy`; `precision_macro`, `recall_macro`, `f1_macro` and the
    `_weighted` variants (weighted by support); per class `precision/<name>`,
    `recall/<name>`, `f1/<name>`; `roc_auc` and `pr_auc` (average precision) --
    for 2 classes those of the second (positive) class, otherwise the one-vs-rest
    macro average; `ece` (top-label, 15 equal-width bins); `log_loss`
    (probabilities clipped to float64 eps, as scikit-learn); `confusion_matrix`
    (rows = true class, columns = predicted); `skipped`, {name: reason} for every
    number that is undefined on these labels (see the module docstring).
    Raises UserFacingError on invalid inputs (see `check_classification_inputs`).
    """
    probabilities = check_classification_inputs(probabilities, labels, class_names)
    classes = len(class_names)
    confusion = multiclass_confusion_matrix(probabilities, labels, classes)
    metrics: dict[str, Any] = {"accuracy": float(multiclass_accuracy(probabilities, labels, classes, average="micro"))}
    skipped: dict[str, str] = {}
    metrics.update(_precision_recall_f1(probabilities, labels, class_names, confusion, skipped))
    metrics.update(_ranking_metrics(probabilities, labels, class_names, skipped))
    metrics["ece"] = float(multiclass_calibration_error(probabilities, labels, classes, n_bins=ECE_BINS, norm="l1"))
    metrics["log_loss"] = float(_per_record_log_loss(probabilities, labels).mean())
    metrics["confusion_matrix"] = confusion.tolist()
    metrics["skipped"] = skipped
    return metrics


def _precision_recall_f1(probabilities, labels, class_names, confusion, skipped) -> dict[str, float]:
    classes = len(class_names)
    metrics = {}
    scorers = {"precision": multiclass_precision, "recall": multiclass_recall, "f1": multiclass_f1_score}
    for name, scorer in scorers.items():
        for average in ("macro", "weighted"):
            metrics[f"{name}_{average}"] = float(scorer(probabilities, labels, classes, average=average))
    per_class = {name: scorer(probabilities, labels, classes, average="none") for name, scorer in scorers.items()}
    seen = (confusion.sum(dim=0) + confusion.sum(dim=1)) > 0
    for index, class_name in enumerate(class_names):
        if not seen[index]:
            for name in scorers:
                skipped[f"{name}/{class_name}"] = (
                    f"class '{class_name}' is absent from both the labels and the predictions, "
                    "so it has no precision, recall or F1 and is left out of the macro averages"
                )
            continue
        for name in scorers:
            metrics[f"{name}/{class_name}"] = float(per_class[name][index])
    return metrics


def _ranking_metrics(probabilities, labels, class_names, skipped) -> dict[str, float]:
    """ROC-AUC and PR-AUC over the classes where they are defined (torchmetrics returns 0 or NaN otherwise)."""
    classes = len(class_names)
    positives = torch.bincount(labels, minlength=classes)
    negatives = labels.shape[0] - positives
    with warnings.catch_warnings():  # classes without positives or negatives are skipped below, with a reason
        warnings.filterwarnings("ignore", message="No (positive|negative) samples in targets")
        auc = multiclass_auroc(probabilities, labels, classes, average="none").to(torch.float64)
        precision = multiclass_average_precision(probabilities, labels, classes, average="none").to(torch.float64)
    scored = [1] if classes == 2 else range(classes)  # binary: the positive class only
    auc_values, ap_values = [], []
    for index in scored:
        name = class_names[index]
        if positives[index] == 0:
            skipped[f"roc_auc/{name}"] = f"class '{name}' has no positive records, so its ROC-AUC and PR-AUC are undefined"
            continue
        ap_values.append(precision[index])
        if negatives[index] == 0:
            skipped[f"roc_auc/{name}"] = f"every record is class '{name}', so its ROC-AUC is undefined"
            continue
        auc_values.append(auc[index])
    metrics = {}
    if auc_values:
        metrics["roc_auc"] = float(torch.stack(auc_values).mean())
    else:
        skipped["roc_auc"] = "no class has both positive and negative records in the labels"
    if ap_values:
        metrics["pr_auc"] = float(torch.stack(ap_values).mean())
    else:
        skipped["pr_auc"] = "no scored class has a positive record in the labels"
    return metrics


def _per_record_log_loss(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # torchmetrics has no log loss for probabilities; clip like scikit-learn so a confident miss is finite.
    eps = torch.finfo(torch.float64).eps
    picked = probabilities.gather(1, labels[:, None]).squeeze(1)
    return -torch.log(picked.clamp(eps, 1 - eps))


# ---- the same numbers for many resamples at once (used by the bootstrap) ----

def resampled_classification_metrics(
    probabilities: torch.Tensor, labels: torch.Tensor, class_names: list[str], counts: torch.Tensor, keys: list[str]
) -> dict[str, torch.Tensor]:
    """The scalar metrics in `keys` for B resamples, given how often each record is drawn.

    `counts` (B, N) float64: counts[b, i] = times record i appears in resample b
    (rows sum to N). Returns {key: (B,) float64}, NaN where the metric is undefined
    in that resample; keys it cannot compute (e.g. `confusion_matrix`) are left
    out, and the caller falls back to recomputing `classification_metrics`.
    torchmetrics scores one set at a time; these are the same formulas applied to
    resampled sufficient statistics, checked equal to it in the tests.
    """
    probabilities = check_classification_inputs(probabilities, labels, class_names)
    records, classes = probabilities.shape
    predictions = probabilities.argmax(dim=1)
    index = {name: i for i, name in enumerate(class_names)}
    out: dict[str, torch.Tensor] = {}
    wanted = set(keys)
    if wanted & _CONFUSION_KEYS or any(key.split("/", 1)[0] in {"precision", "recall", "f1"} for key in wanted):
        cells = torch.nn.functional.one_hot(labels * classes + predictions, classes * classes).to(torch.float64)
        confusion = (counts @ cells).reshape(-1, classes, classes)
        scores = _scores_from_confusion(confusion)
        for key in wanted:
            family, _, class_name = key.partition("/")
            if key in scores:
                out[key] = scores[key]
            elif family in {"precision", "recall", "f1"} and class_name in index:
                out[key] = scores[f"{family}/per_class"][:, index[class_name]]
    if "log_loss" in wanted:
        out["log_loss"] = counts @ _per_record_log_loss(probabilities, labels) / records
    if "ece" in wanted:
        out["ece"] = _resampled_ece(probabilities, labels, predictions, counts)
    if wanted & {"roc_auc", "pr_auc"}:
        out.update(_resampled_ranking(probabilities, labels, counts))
    return {key: value for key, value in out.items() if key in wanted}


_CONFUSION_KEYS = {"accuracy"} | {f"{n}_{a}" for n in ("precision", "recall", "f1") for a in ("macro", "weighted")}


def _scores_from_confusion(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy, per-class and averaged precision/recall/F1 from (B, C, C) confusion matrices."""
    true_pos = confusion.diagonal(dim1=1, dim2=2)
    support = confusion.sum(dim=2)
    predicted = confusion.sum(dim=1)
    false_pos, false_neg = predicted - true_pos, support - true_pos

    def ratio(numerator, denominator):  # zero_division=0, as scikit-learn's default here
        return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), torch.zeros_like(numerator))

    per_class = {
        "precision": ratio(true_pos, predicted),
        "recall": ratio(true_pos, support),
        "f1": ratio(2 * true_pos, 2 * true_pos + false_pos + false_neg),
    }
    seen = (true_pos + false_pos + false_neg) > 0
    scores = {"accuracy": true_pos.sum(dim=1) / confusion.sum(dim=(1, 2))}
    for name, values in per_class.items():
        scores[f"{name}/per_class"] = torch.where(seen, values, torch.full_like(values, torch.nan))
        scores[f"{name}_macro"] = (values * seen).sum(dim=1) / seen.sum(dim=1)
        scores[f"{name}_weighted"] = (values * support).sum(dim=1) / support.sum(dim=1)
    return scores


def _resampled_ece(probabilities, labels, predictions, counts) -> torch.Tensor:
    """Top-label ECE with torchmetrics' binning: bucketize(confidence, linspace(0, 1, 16), right=True) - 1."""
    confidence = probabilities.max(dim=1).values
    correct = (predictions == labels).to(torch.float64)
    # torchmetrics bins float32 confidences; do the same so a confidence on a bin edge lands in the same bin.
    boundaries = torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float32)
    bin_index = torch.bucketize(confidence.float(), boundaries, right=True) - 1
    bins = torch.nn.functional.one_hot(bin_index, ECE_BINS + 1).to(torch.float64)
    gap_per_bin = counts @ (bins * (correct - confidence)[:, None])  # sum of (correct - confidence) per bin
    return gap_per_bin.abs().sum(dim=1) / probabilities.shape[0]


def _resampled_ranking(probabilities, labels, counts) -> dict[str, torch.Tensor]:
    """Macro one-vs-rest ROC-AUC and average precision for every resample (binary: the positive class)."""
    classes = probabilities.shape[1]
    scored = torch.tensor([1]) if classes == 2 else torch.arange(classes)
    scores = probabilities[:, scored].T  # (classes scored, N)
    positive = labels[None, :] == scored[:, None]
    block = max(1, 4_000_000 // scores.numel())  # bounds memory to ~32 MB per intermediate
    auc, ap = zip(*(_weighted_auc_ap(scores, positive, part) for part in counts.split(block)))
    auc, ap = torch.cat(auc), torch.cat(ap)
    return {"roc_auc": auc.nanmean(dim=1), "pr_auc": ap.nanmean(dim=1)}


def _weighted_auc_ap(scores: torch.Tensor, positive: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ROC-AUC and average precision (B, K) of K one-vs-rest problems (K, N) for B resamples.

    A record drawn k times is k tied records, so a resample is the full-data
    ranking with record weights. As in scikit-learn, tied scores form one
    threshold. Summing over positive records p (weight w_p):
      AP  = sum w_p * precision at p's threshold / positives, with precision =
            positives / records scoring >= that threshold;
      AUC = sum w_p * (negatives scoring below p + half those tied with p) / (positives x negatives),
    which equals scikit-learn's step-wise AP and trapezoidal ROC-AUC.
    """
    classes, records = scores.shape
    order = torch.argsort(scores, dim=1, descending=True)
    ordered = scores.gather(1, order)
    is_pos = positive.gather(1, order)
    position = torch.arange(records).expand(classes, records)
    differs = ordered[:, 1:] != ordered[:, :-1]
    edge = torch.ones(classes, 1, dtype=torch.bool)
    # First and last sorted position of each record's threshold (its run of tied scores).
    start = torch.where(torch.cat([edge, differs], dim=1), position, 0).cummax(dim=1).values
    end = torch.where(torch.cat([differs, edge], dim=1), position, records - 1).flip(1).cummin(dim=1).values.flip(1)
    # Sorted positions of the positives, padded to the largest class.
    positives = is_pos.sum(dim=1)
    width = max(int(positives.max()), 1)
    pos_at = torch.argsort((~is_pos).to(torch.int8), dim=1, stable=True)[:, :width]
    real = torch.arange(width)[None, :] < positives[:, None]

    weights = counts[:, order]  # (B, K, N)
    true_pos = (weights * is_pos).cumsum(dim=2)
    drawn = weights.cumsum(dim=2)
    shape = (counts.shape[0], classes, width)

    def at(cumulative, index):  # cumulative sums at sorted positions (K, width); index -1 reads 0
        padded = torch.cat([torch.zeros(*cumulative.shape[:2], 1, dtype=cumulative.dtype), cumulative], dim=2)
        return padded.gather(2, (index + 1).expand(shape))

    end_p, before_p = end.gather(1, pos_at), start.gather(1, pos_at) - 1
    tp_end, drawn_end = at(true_pos, end_p), at(drawn, end_p)
    neg_end, neg_before = drawn_end - tp_end, at(drawn, before_p) - at(true_pos, before_p)
    weight = weights.gather(2, pos_at.expand(shape)) * real
    total_pos, total_neg = true_pos[:, :, -1], drawn[:, :, -1] - true_pos[:, :, -1]
    ap = (weight * tp_end / drawn_end.clamp(min=1)).sum(dim=2) / total_pos  # drawn_end >= 1 wherever weight > 0
    auc = (weight * (total_neg[:, :, None] - (neg_end + neg_before) / 2)).sum(dim=2) / (total_pos * total_neg)
    ap[total_pos == 0] = torch.nan
    auc[(total_pos == 0) | (total_neg == 0)] = torch.nan
    return auc, ap
