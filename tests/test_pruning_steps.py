"""The pruner compares trials at equal epochs of data seen, not at equal optimizer steps.

With the batch size searched, optimizer step 5 is one epoch for a batch of 256 and a sixth of one for a batch
of 32; the median pruner compares a trial only with trials that reported at the same step, so step-keyed
reports would never compare the two (or compare epoch 5 of one with epoch 9 of another).
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tuning_fixtures import tuning_config  # noqa: E402

RECORDS = 1078  # digits' train split in the bench: 34 steps an epoch at batch 32, 5 at batch 256 (drop_last)


def study_with(**tune):
    from trainflow.experiments.samplers import build_pruner

    config = tuning_config(8, pruner="median", **tune).tune
    return optuna.create_study(direction="maximize", pruner=build_pruner(config))


def run_reports(study, batch_size: int, accuracies: list[float]) -> str | None:
    """One trial validated at each epoch end through the worker's hook; the prune reason, or None if it finished."""
    from trainflow.experiments.trial_worker import _validation_hook

    trial = study.ask()
    hook = _validation_hook(trial, "val_accuracy", single=True)
    steps_per_epoch = RECORDS // batch_size
    for epoch, accuracy in enumerate(accuracies, start=1):
        if reason := hook(epoch * steps_per_epoch, float(epoch), {"val_accuracy": accuracy}):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return reason
    study.tell(trial, max(accuracies))
    return None


def test_a_large_batch_trial_behind_a_small_batch_one_at_the_same_epoch_is_pruned():
    study = study_with(pruner_startup_trials=1)
    assert run_reports(study, 32, [0.90, 0.95, 0.97]) is None
    reason = run_reports(study, 256, [0.40, 0.60, 0.80])
    # Step-keyed reports (34 vs 4 steps an epoch) share no step, so this trial could never be pruned.
    assert reason is not None and "pruned at step 4 (epoch 1)" in reason


def test_a_trial_ahead_at_equal_epochs_is_not_pruned_whatever_its_step_count():
    study = study_with(pruner_startup_trials=1)
    assert run_reports(study, 256, [0.50, 0.60, 0.70]) is None
    assert run_reports(study, 32, [0.90, 0.95, 0.97]) is None


@pytest.mark.parametrize("warmup, pruned_at_epoch", [(0.0, 1), (1.0, 1), (1.5, 2), (2.0, 2), (2.01, 3)])
def test_the_warm_up_counts_epochs_and_a_trial_can_be_pruned_from_the_first_report_at_or_past_it(warmup, pruned_at_epoch):
    study = study_with(pruner_startup_trials=1, pruner_warmup_epochs=warmup)
    assert run_reports(study, 32, [0.90, 0.95, 0.97]) is None
    reason = run_reports(study, 32, [0.10, 0.20, 0.30])
    assert reason is not None and f"(epoch {pruned_at_epoch})" in reason


@pytest.mark.parametrize("warmup", [-1.0, float("nan"), float("inf"), "two"])
def test_a_warm_up_that_is_not_a_finite_non_negative_number_of_epochs_is_refused_naming_it(warmup):
    from trainflow.errors import ConfigError

    with pytest.raises(ConfigError, match="tune.pruner_warmup_epochs"):
        tuning_config(4, pruner_warmup_epochs=warmup)


def test_the_old_step_warm_up_key_is_refused_naming_it():
    from trainflow.errors import ConfigError

    with pytest.raises(ConfigError, match="pruner_warmup_steps"):
        tuning_config(4, pruner_warmup_steps=100)


@pytest.mark.parametrize("warmup, start_step", [(0.0, "1"), (1.0, "1"), (2.5, "3"), (4.0, "4")])
def test_katib_medianstop_starts_at_the_first_epoch_end_report_past_the_warm_up(warmup, start_step):
    from trainflow.kubeflow.katib_experiment import katib_experiment

    config = tuning_config(4, pruner="median", pruner_warmup_epochs=warmup)
    config = config.model_copy(update={"train": config.train.model_copy(update={
        "validation": config.train.validation.model_copy(update={"every_n_steps": None, "every_epoch": True})})})
    settings = {s["name"]: s["value"] for s in katib_experiment(config)["spec"]["earlyStopping"]["algorithmSettings"]}
    assert settings["start_step"] == start_step


def test_katib_refuses_a_warm_up_with_step_counted_validations_in_one_sentence():
    from trainflow.errors import ConfigError
    from trainflow.kubeflow.katib_experiment import katib_experiment

    with pytest.raises(ConfigError, match=r"tune.pruner_warmup_epochs: .*every_n_steps") as raised:
        katib_experiment(tuning_config(4, pruner="median", pruner_warmup_epochs=1.0))
    assert "\n" not in str(raised.value)


def test_a_warm_up_without_the_median_pruner_does_not_stop_a_katib_compile():
    from trainflow.kubeflow.katib_experiment import katib_experiment

    experiment = katib_experiment(tuning_config(4, pruner="none", pruner_warmup_epochs=1.0))
    assert "earlyStopping" not in experiment["spec"] or not experiment["spec"]["earlyStopping"]
