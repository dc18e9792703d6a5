"""The engine's rules in isolation: early stopping, parameter groups, reduce-on-plateau, and config errors.

Each stop reason is checked in min and max mode on EarlyStopping itself; the
engine-level tests run the real Trainer in this process on the wine task
(a few dozen tiny steps, seconds).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from engine_tasks import WineTask  # noqa: E402
from trainflow.config import EarlyStoppingConfig, OptimizerConfig, RunConfig, TrainConfig, parse_section  # noqa: E402
from trainflow.errors import ConfigError  # noqa: E402
from trainflow.training.distributed import ProcessInfo  # noqa: E402
from trainflow.training.early_stopping import EarlyStopping  # noqa: E402
from trainflow.training.engine import Trainer  # noqa: E402
from trainflow.training.optimizers import build_optimizer, parameter_groups  # noqa: E402
from trainflow.training.run_identity import RunIdentity  # noqa: E402


def stopper(mode: str, **rules) -> EarlyStopping:
    rules.setdefault("patience", None)
    return EarlyStopping(EarlyStoppingConfig(monitor="val_metric", mode=mode, **rules), lower_is_better=mode == "min")


def feed(rule: EarlyStopping, values: list[float], train_losses: list[float] | None = None) -> list[bool]:
    """Validations 1..n (step = index); returns `update`'s "new best" answers, stopping where the rule stops."""
    answers = []
    for step, value in enumerate(values, start=1):
        assert not rule.should_stop, f"stopped too early, at validation {step - 1}: {rule.stop_reason}"
        answers.append(rule.update(step, value, train_losses[step - 1] if train_losses else None))
    return answers


def toward(mode: str, values: list[float]) -> list[float]:
    """The same story in max mode: negate, so 'lower is better' becomes 'higher is better'."""
    return values if mode == "min" else [-v for v in values]


# ---------------------------------------------------------------- early stopping, one rule at a time
@pytest.mark.parametrize("mode", ["min", "max"])
def test_patience_counts_only_improvements_beyond_min_delta_but_the_best_is_the_strict_best(mode):
    rule = stopper(mode, patience=2, min_delta=0.1)
    # 0.95 and 0.93 are new bests, but neither beats 1.0 by more than min_delta: two strikes.
    answers = feed(rule, toward(mode, [1.0, 0.95, 0.93]))
    assert answers == [True, True, True]
    assert rule.stop_kind == "patience"
    assert rule.best_value == toward(mode, [0.93])[0] and rule.best_step == 3
    assert "did not improve by more than 0.1 for 2 validations" in rule.stop_reason


@pytest.mark.parametrize("mode", ["min", "max"])
def test_an_improvement_beyond_min_delta_resets_patience(mode):
    rule = stopper(mode, patience=2, min_delta=0.1)
    feed(rule, toward(mode, [1.0, 0.95, 0.85, 0.84]))  # 0.85 beats 1.0 by 0.15: the count restarts
    assert not rule.should_stop and rule.validations_without_improvement == 1
    rule.update(5, toward(mode, [0.9])[0])
    assert rule.stop_kind == "patience" and rule.best_value == toward(mode, [0.84])[0] and rule.best_step == 4


@pytest.mark.parametrize("mode", ["min", "max"])
def test_plateau_stops_when_the_relative_range_over_the_window_is_below_the_threshold(mode):
    rule = stopper(mode, plateau={"window": 3, "threshold": 0.01})
    feed(rule, toward(mode, [1.0, 0.5, 0.499]))  # the window still holds the big drop
    assert not rule.should_stop
    rule.update(4, toward(mode, [0.498])[0])  # (0.5 - 0.498) / 0.5 = 0.004 < 0.01
    assert rule.stop_kind == "plateau"
    assert "over the last 3 validations" in rule.stop_reason


@pytest.mark.parametrize("mode", ["min", "max"])
def test_overfitting_needs_validation_worse_and_training_better_at_every_step_of_the_window(mode):
    values = toward(mode, [0.5, 0.6, 0.7, 0.8])
    flat_training = stopper(mode, overfitting={"window": 3})
    feed(flat_training, values, train_losses=[1.0, 0.9, 0.9, 0.8])  # training did not improve once
    assert not flat_training.should_stop

    rule = stopper(mode, overfitting={"window": 3})
    feed(rule, values[:3], train_losses=[1.0, 0.9, 0.8])
    assert not rule.should_stop  # only two worsening steps so far
    rule.update(4, values[3], 0.7)
    assert rule.stop_kind == "overfitting"
    assert rule.best_step == 1


def test_divergence_in_min_mode_is_above_factor_times_best():
    rule = stopper("min", divergence_factor=2.0)
    feed(rule, [1.0, 0.5, 0.99])  # 0.99 < 2 × 0.5
    assert not rule.should_stop
    rule.update(4, 1.01)
    assert rule.stop_kind == "divergence" and "diverged beyond 2x the best 0.5 at step 2" in rule.stop_reason


def test_divergence_in_max_mode_is_below_best_over_factor():
    rule = stopper("max", divergence_factor=2.0)
    feed(rule, [0.8, 0.41])  # 0.41 > 0.8 / 2
    assert not rule.should_stop
    rule.update(3, 0.39)
    assert rule.stop_kind == "divergence"


@pytest.mark.parametrize(("mode", "target", "values"), [("min", 0.3, [0.5, 0.31, 0.3]), ("max", 0.9, [0.5, 0.89, 0.9])])
def test_target_stops_as_soon_as_it_is_reached(mode, target, values):
    rule = stopper(mode, target=target)
    feed(rule, values)
    assert rule.stop_kind == "target" and rule.best_step == 3
    assert f"reached the target {target:g}" in rule.stop_reason


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_metric_stops_at_once_and_is_never_the_best(mode, bad):
    rule = stopper(mode, patience=100)
    feed(rule, [0.5, bad])
    assert rule.stop_kind == "non_finite" and rule.best_value == 0.5 and rule.best_step == 1
    assert f"became {bad}" in rule.stop_reason


def test_a_non_finite_training_loss_stops_with_its_own_reason():
    rule = stopper("min")
    rule.stop_for_non_finite_loss(7, math.nan)
    assert rule.should_stop and rule.stop_kind == "non_finite"
    assert "training loss became nan at step 7" in rule.stop_reason


def test_state_dict_survives_json_and_the_restored_rule_stops_where_the_original_does():
    values, train = [1.0, 0.8, 0.85, 0.9, 0.95, 1.0], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    original = stopper("min", patience=3, min_delta=0.01, overfitting={"window": 3})
    feed(original, values[:3], train[:3])
    restored = stopper("min", patience=3, min_delta=0.01, overfitting={"window": 3})
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.state_dict() == original.state_dict()
    for step in (4, 5):
        assert original.update(step, values[step - 1], train[step - 1]) == restored.update(step, values[step - 1], train[step - 1])
        assert restored.state_dict() == original.state_dict()
    assert original.stop_kind == restored.stop_kind == "overfitting"  # 0.8 → 0.85 → 0.9 → 0.95 while training falls
    assert restored.stop_reason == original.stop_reason


# ---------------------------------------------------------------- optimizer parameter groups
class NormedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
        self.head = nn.Linear(8, 2)
        self.head_extra = nn.Linear(2, 2)  # shares the prefix text "head" but not the module "head"


def test_parameter_groups_skip_decay_on_norms_and_biases_and_apply_the_longest_prefix():
    cfg = OptimizerConfig(learning_rate=1e-3, weight_decay=0.1, module_learning_rates={"body": 1e-2, "body.0": 5e-3})
    groups = {name: (g["lr"], g["weight_decay"]) for g in parameter_groups(NormedNet(), cfg) for name in g["param_names"]}
    assert groups == {
        "body.0.weight": (5e-3, 0.1), "body.0.bias": (5e-3, 0.0),  # body.0 is longer than body
        "body.1.weight": (1e-2, 0.0), "body.1.bias": (1e-2, 0.0),  # LayerNorm: no decay
        "head.weight": (1e-3, 0.1), "head.bias": (1e-3, 0.0),
        "head_extra.weight": (1e-3, 0.1), "head_extra.bias": (1e-3, 0.0),
    }


@pytest.mark.parametrize(("name", "kind", "checks"), [
    ("adamw", torch.optim.AdamW, {"betas": (0.8, 0.9)}),
    ("adam", torch.optim.Adam, {"betas": (0.8, 0.9)}),
    ("sgd", torch.optim.SGD, {"momentum": 0.5, "nesterov": True}),
    ("rmsprop", torch.optim.RMSprop, {"momentum": 0.5}),
])
def test_each_optimizer_gets_its_settings_and_keeps_the_groups(name, kind, checks):
    cfg = OptimizerConfig(name=name, learning_rate=1e-3, betas=(0.8, 0.9), momentum=0.5, nesterov=name == "sgd",
                          module_learning_rates={"head": 1e-2})
    optimizer = build_optimizer(parameter_groups(NormedNet(), cfg), cfg)
    assert type(optimizer) is kind
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [1e-3, 1e-2]
    for key, value in checks.items():
        assert all(g[key] == value for g in optimizer.param_groups), key


# ---------------------------------------------------------------- engine-level rules, in this process
BASE = {
    "max_epochs": 2, "batch_size": 8, "device": "cpu", "grad_clip_norm": 1.0,
    "optimizer": {"name": "adamw", "learning_rate": 0.01}, "schedule": {"name": "constant"},
    "validation": {"every_n_steps": 3, "every_epoch": False},
    "early_stopping": {"monitor": "val_loss", "patience": None},
    "checkpoints": {"keep_top_k": 10, "total_limit": 20},
    "logging": {"tensorboard": False},
}


def trainer(tmp_path: Path, task: WineTask | None = None, info: ProcessInfo | None = None, **changes) -> Trainer:
    settings = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        settings[key] = {**settings[key], **value} if isinstance(value, dict) and isinstance(settings.get(key), dict) else value
    cfg = TrainConfig.model_validate(settings)
    identity = RunIdentity.build("classification", 0, {}, cfg.model_dump(mode="json"), "wine")
    return Trainer(task or WineTask(), cfg, tmp_path / "checkpoints", 0, identity, info=info or ProcessInfo())


def test_min_delta_stops_early_but_the_best_checkpoint_is_the_lowest_validation_loss(tmp_path):
    run = trainer(tmp_path, early_stopping={"patience": 2, "min_delta": 10.0})  # no change ever counts for patience
    outcome = run.fit()
    losses = [record["val_loss"] for record in outcome.history]
    assert outcome.stop_reason.startswith("early stopping (patience)") and len(losses) == 3
    assert losses[2] < losses[0], "the wine MLP improves over 9 steps; otherwise this test shows nothing"
    assert outcome.best_step != outcome.history[0]["step"]  # min_delta held patience's reference, not the best
    assert outcome.best_value == min(losses) and outcome.best_step == outcome.history[losses.index(min(losses))]["step"]
    assert outcome.best_checkpoint.name == f"step-{outcome.best_step:09d}"


def test_reduce_on_plateau_lowers_the_rate_after_plateau_patience_validations_without_improvement(tmp_path):
    # A tiny rate keeps val_loss within ReduceLROnPlateau's 1e-4 relative threshold: every validation after the
    # first is "no improvement" to the schedule, so the rate halves at validations 3 and 5 (patience 1). The rate
    # stays above the schedule's eps (1e-8), below which it would ignore a decay.
    run = trainer(tmp_path, max_epochs=1, optimizer={"learning_rate": 1e-7},
                  schedule={"name": "reduce_on_plateau", "plateau_patience": 1, "gamma": 0.5},
                  validation={"every_n_steps": 2})
    outcome = run.fit()
    rates = [record["lr"] for record in outcome.history]
    assert rates[:6] == pytest.approx([1e-7, 1e-7, 5e-8, 5e-8, 2.5e-8, 2.5e-8], rel=1e-12)

    reference_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-7)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(reference_optimizer, mode="min", factor=0.5, patience=1)
    expected = []
    for record in outcome.history:
        reference.step(record["val_loss"])
        expected.append(reference_optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx(expected, rel=1e-12)
    steps = [record["step"] for record in outcome.history]
    assert steps == list(range(2, 2 * len(steps) + 1, 2))


# ---------------------------------------------------------------- config errors, before anything runs
def assert_one_sentence_naming(error: Exception, field: str) -> None:
    message = str(error)
    assert message.startswith(f"{field}:"), message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize(("world", "batch", "effective"), [(1, 4, 10), (2, 4, 12)])
def test_an_effective_batch_that_is_not_a_multiple_is_refused_before_joining_the_group(tmp_path, world, batch, effective):
    # world 2 without a process group: the check must come before init_process_group, which would need MASTER_ADDR.
    run = trainer(tmp_path, info=ProcessInfo(rank=0, world_size=world), batch_size=batch, effective_batch_size=effective)
    with pytest.raises(ConfigError) as caught:
        run.setup()
    assert_one_sentence_naming(caught.value, "train.effective_batch_size")
    assert f"{effective} is not a multiple of batch_size × world size = {batch} × {world}" in str(caught.value)
    assert not (tmp_path / "checkpoints").exists()


def test_an_effective_batch_that_divides_sets_the_accumulation(tmp_path, monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    run = trainer(tmp_path, info=ProcessInfo(rank=0, world_size=2), batch_size=4, effective_batch_size=24)
    with pytest.raises(Exception, match="MASTER_ADDR"):  # got past the batch checks to the rendezvous
        run.setup()
    assert (run.micro_batch, run.accumulation, run.steps_per_epoch) == (4, 3, 60 // 12)


@pytest.mark.parametrize(("world", "train_records", "needed"), [(1, 15, 16), (2, 20, 32)])
def test_a_train_split_smaller_than_one_effective_batch_is_refused(tmp_path, world, train_records, needed):
    run = trainer(tmp_path, task=WineTask(train_records=train_records), info=ProcessInfo(rank=0, world_size=world),
                  batch_size=8, gradient_accumulation=2)
    with pytest.raises(ConfigError) as caught:
        run.setup()
    assert_one_sentence_naming(caught.value, "train.batch_size")
    assert f"= {needed} training records, but the train split has {train_records}" in str(caught.value)
    assert not (tmp_path / "checkpoints").exists()


def test_a_module_learning_rate_prefix_that_matches_nothing_is_refused(tmp_path):
    run = trainer(tmp_path, optimizer={"module_learning_rates": {"encoder": 0.1}})
    with pytest.raises(ConfigError) as caught:
        run.fit()
    assert_one_sentence_naming(caught.value, "train.optimizer.module_learning_rates")
    assert "no trainable parameter starts with 'encoder'; parameter names start like 0, 2" in str(caught.value)
    assert not (tmp_path / "checkpoints").exists()


def test_a_monitored_metric_the_task_does_not_log_is_refused_by_the_run_config():
    raw = {"run_name": "r", "task": "text_to_image", "ingest": {"dataset_dir": "data"}, "model": {"base": "base"},
           "train": {"early_stopping": {"monitor": "val_accuracy", "mode": "max"}}, "register": {"model_name": "m"}}
    with pytest.raises(ConfigError) as caught:
        parse_section(RunConfig, raw, "run.yaml")
    message = str(caught.value)
    assert "train.early_stopping.monitor: task text_to_image does not log 'val_accuracy'; choose one of val_loss" in message
    assert "\n" not in message
    classification = {**raw, "task": "classification", "ingest": {"sklearn_dataset": "wine"}, "model": {"architecture": "mlp"}}
    assert parse_section(RunConfig, classification, "run.yaml").train.early_stopping.monitor == "val_accuracy"
