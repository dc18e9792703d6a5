"""Supervised metrics and their uncertainty: the one import for the evaluate and compare stages.

- `classification_metrics(probabilities, labels, class_names)`
- `regression_metrics(predictions, targets, target_names)`
- `segmentation_metrics(predicted, masks, class_names, ignore_index=None)`
- `bootstrap_intervals(metric_fn, arrays, keys, ...)` and
  `paired_bootstrap(metric_fn, arrays_a, arrays_b, key, ...)`, where `metric_fn`
  is one of the above bound with `functools.partial` and `arrays` holds its tensor
  inputs by name, e.g. {"probabilities": p, "labels": y}.

Every function returns JSON-able Python values; a number that is undefined on the
given data is absent and explained under the result's `skipped` entry.
"""

from trainflow.evaluation.bootstrap import bootstrap_intervals, paired_bootstrap, resample_indices
from trainflow.metrics.classification_metrics import classification_metrics
from trainflow.metrics.metric_directions import is_lower_better
from trainflow.metrics.regression_metrics import regression_metrics
from trainflow.metrics.segmentation_metrics import per_image_confusion, segmentation_metrics

__all__ = [
    "bootstrap_intervals",
    "classification_metrics",
    "is_lower_better",
    "paired_bootstrap",
    "per_image_confusion",
    "regression_metrics",
    "resample_indices",
    "segmentation_metrics",
]
