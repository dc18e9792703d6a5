"""Fold results -> the cross-validation summary: per-fold table, mean/std/t-interval, pooled out-of-fold metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from trainflow.evaluation.record_outputs import RecordOutputs, load_record_outputs, save_record_outputs
from trainflow.tasks import get_task
from trainflow.config import RunConfig
from trainflow.experiments.cv_statistics import fold_interval

FOLD_RESULT = "fold.json"


def _oof(fold_dirs: list[Path], repeat: int) -> RecordOutputs:
    """One repeat's held-out outputs of the best checkpoints, concatenated in record-id order."""
    parts = [load_record_outputs(folder / "predictions") for folder in fold_dirs]
    ids = [i for part in parts for i in part.record_ids]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    index = torch.tensor(order, dtype=torch.long)
    truth = torch.cat([p.truth for p in parts])[index] if parts[0].truth is not None else None
    best = torch.cat([p.outputs["best"] for p in parts])[index]
    return RecordOutputs(task=parts[0].task, names=parts[0].names, truth=truth, outputs={"best": best},
                         record_ids=[ids[i] for i in order], dataset_sha256=f"out-of-fold repeat {repeat}", seed=repeat)


def aggregate(fold_dirs: list[Path], config: RunConfig, oof_dir: Path) -> dict[str, Any]:
    folds = [json.loads((d / FOLD_RESULT).read_text(encoding="utf-8")) for d in fold_dirs]
    headline = get_task(config.task).headline_keys()
    confidence = config.cross_validation.confidence if config.cross_validation else 0.95
    metrics = {name: fold_interval([f["metrics"][name] for f in folds], confidence)
               for name in headline if all(name in f["metrics"] for f in folds)}
    repeats = sorted({f["repeat"] for f in folds})
    pooled = {}
    for repeat in repeats:
        dirs = [d for d, f in zip(fold_dirs, folds) if f["repeat"] == repeat]
        outputs = _oof(dirs, repeat)
        save_record_outputs(oof_dir / f"repeat-{repeat}", outputs)
        scores = get_task(outputs.task).metric_function(outputs.names)(**outputs.arrays("best"))
        pooled[str(repeat)] = {k: float(v) for k, v in scores.items() if k in headline and isinstance(v, float)}
    (oof_dir / "folds.json").write_text(json.dumps(
        [{"repeat": f["repeat"], "fold": f["fold"], "n_held_out": f["n_held_out"]} for f in folds], indent=1) + "\n")
    nested = bool(config.cross_validation and config.cross_validation.nested)
    return {"run_name": config.run_name, "task": config.task, "folds": folds, "metrics": metrics, "nested": nested,
            **({"nested_note": "each fold tuned its own configuration on its training records (tune section, "
                               "scored on the fold's inner validation part) before training and scoring it, so "
                               "these numbers estimate tune-then-train, not one fixed configuration"} if nested else {}),
            "out_of_fold": pooled, "repeats": len(repeats), "num_folds": len(folds) // max(len(repeats), 1),
            "interval": f"{confidence:.0%} t-interval across the {len(folds)} fold scores (df {len(folds) - 1}); the "
                        "folds share training records, so it understates the spread: compare configurations with "
                        "the corrected resampled t-test"}
