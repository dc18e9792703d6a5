"""Which train records keep their labels when ingest.labelled_fraction hides the rest (task semi_supervised).

A pure function of the train records' ids and labels, the fraction and the seed, like the split itself:
the same inputs give the same manifest byte for byte. Stratified: every class keeps round(fraction × its
count) labelled records, and at least one, so a class is never left without a labelled example.
(scikit-learn's stratified splitters refuse fractions that leave a class fewer records than classes.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from trainflow.data.checks.record_validation import IngestRecord


def unlabelled_train_ids(records: Sequence[IngestRecord], assignment: dict[str, str], fraction: float,
                         seed: int) -> set[str]:
    """Ids of the train records whose labels the manifest leaves out (empty when fraction is 1)."""
    by_class: dict[int, list[str]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.record_id):
        if assignment[record.record_id] == "train" and record.label is not None:
            by_class[record.label].append(record.record_id)
    rng = np.random.default_rng([seed, 104_729])  # its own stream: the split's draws are unchanged
    hidden: set[str] = set()
    for label in sorted(by_class):
        ids = by_class[label]
        keep = max(1, round(fraction * len(ids)))
        order = rng.permutation(len(ids))
        hidden.update(ids[i] for i in order[keep:])
    return hidden
