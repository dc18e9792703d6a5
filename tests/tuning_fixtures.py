"""A tiny tuning setup on real data (digits subset, a 4-channel CNN), shared by the tuning tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainflow.config import RunConfig, parse_section


def tuning_payload(trials: int = 4, **tune: Any) -> dict[str, Any]:
    return {
        "run_name": "tiny-tune", "task": "classification", "seed": 0,
        "ingest": {"sklearn_dataset": "digits", "resolution": 8, "max_records": 300,
                   "split": {"train": 0.6, "val": 0.2, "test": 0.2}},
        "model": {"architecture": "small_cnn", "width": 4},
        "train": {"max_epochs": 3, "batch_size": 32, "optimizer": {"name": "adamw", "learning_rate": 3e-3},
                  "schedule": {"name": "constant"}, "mixed_precision": "no", "device": "cpu",
                  "validation": {"every_n_steps": 2, "every_epoch": False},
                  "early_stopping": {"monitor": "val_accuracy", "patience": None},
                  "checkpoints": {"keep_top_k": 1, "total_limit": 2}, "logging": {"tensorboard": False}},
        "evaluate": {"bootstrap_resamples": 0},
        "register": {"model_name": "tiny-tune", "gates": [{"metric": "accuracy", "min": 0.0}]},
        "tune": {"params": {"train.optimizer.learning_rate": {"float": [1e-4, 5e-2], "log": True},
                            "train.batch_size": {"categorical": [16, 32]}},
                 "trials": trials, "pruner_startup_trials": 1, **tune},
    }


def tuning_config(trials: int = 4, **tune: Any) -> RunConfig:
    return parse_section(RunConfig, tuning_payload(trials, **tune), "the test config")


def study_trials(study_dir: Path):
    """The study's trials as the journal holds them now."""
    import optuna

    from trainflow.experiments.study_storage import JOURNAL_FILE

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(study_dir / JOURNAL_FILE)))
    summaries = optuna.get_all_study_summaries(storage)
    if not summaries:
        return []
    return optuna.load_study(study_name=summaries[0].study_name, storage=storage).get_trials(deepcopy=False)
