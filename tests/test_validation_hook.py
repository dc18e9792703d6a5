"""The engine's validation hook: what a tuning trial's pruner uses to stop a run at once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from engine_tasks import WineTask  # noqa: E402
from trainflow.config import TrainConfig  # noqa: E402
from trainflow.training.distributed import ProcessInfo  # noqa: E402
from trainflow.training.engine import Trainer  # noqa: E402
from trainflow.training.run_identity import RunIdentity  # noqa: E402

SETTINGS = {
    "max_epochs": 3, "batch_size": 16, "optimizer": {"name": "adamw", "learning_rate": 1e-2},
    "schedule": {"name": "constant"}, "mixed_precision": "no", "device": "cpu", "grad_clip_norm": 0.0,
    "validation": {"every_n_steps": 3, "every_epoch": False},
    "early_stopping": {"monitor": "val_loss", "patience": None},
    "checkpoints": {"keep_top_k": 10, "total_limit": 20}, "logging": {"tensorboard": False},
}


def make_trainer(folder: Path, hook) -> Trainer:
    cfg = TrainConfig.model_validate(json.loads(json.dumps(SETTINGS)))
    identity = RunIdentity.build("classification", 0, {}, cfg.model_dump(mode="json"), "wine")
    return Trainer(WineTask(), cfg, folder, 0, identity, info=ProcessInfo(), validation_hook=hook)


def test_a_hook_that_returns_a_reason_stops_the_run_at_that_validation_with_kind_pruned(tmp_path):
    seen: list[tuple[int, float, float]] = []

    def hook(step: int, epoch: float, metrics: dict[str, float]) -> str | None:
        seen.append((step, epoch, metrics["val_loss"]))
        return "trial 3 pruned at step 6 by the median pruner" if step == 6 else None

    outcome = make_trainer(tmp_path / "checkpoints", hook).fit()
    assert [step for step, _, _ in seen] == [3, 6]
    assert outcome.stop_kind == "pruned" and outcome.steps_run == 6
    assert "trial 3 pruned at step 6" in outcome.stop_reason
    assert [record["step"] for record in outcome.history] == [3, 6]
    assert [value for _, _, value in seen] == [record["val_loss"] for record in outcome.history]
    # The checkpoint of the pruning validation is written as usual, so a resumed trial does not train again.
    assert outcome.last_checkpoint is not None and outcome.last_checkpoint.name == "step-000000006"
    resumed = make_trainer(tmp_path / "checkpoints", hook).fit()
    assert resumed.stop_kind == "pruned" and resumed.steps_run == 6 and len(seen) == 2


def test_a_hook_that_never_answers_changes_nothing(tmp_path):
    plain = make_trainer(tmp_path / "a", None).fit()
    hooked = make_trainer(tmp_path / "b", lambda step, epoch, metrics: None).fit()
    assert hooked.stop_kind == plain.stop_kind == "max_epochs"
    assert [r["val_loss"] for r in hooked.history] == [r["val_loss"] for r in plain.history]
