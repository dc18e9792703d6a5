"""What a study reports: the Pareto front and the refit's stated pick, and the refit's configuration (train or train+val)."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

sys.path.insert(0, str(Path(__file__).parent))

from tuning_fixtures import tuning_config  # noqa: E402

LR = "train.optimizer.learning_rate"


def two_objective_study(points):
    study = optuna.create_study(directions=["minimize", "maximize"])
    for lr, values in points:
        study.add_trial(create_trial(params={LR: lr}, distributions={LR: FloatDistribution(1e-4, 1e-1, log=True)},
                                     values=values, state=TrialState.COMPLETE))
    return study


def test_the_pareto_front_is_the_non_dominated_trials_and_the_refit_takes_the_best_first_objective_on_it(tmp_path):
    from types import SimpleNamespace

    from trainflow.experiments.study_results import REFIT_RULE, study_results
    from trainflow.experiments.tuning_report import write_tuning_report

    # (val_loss: minimize, val_accuracy: maximize); trial 1 is dominated by trial 0, trial 3 by trial 2.
    study = two_objective_study([(1e-3, [0.30, 0.90]), (2e-3, [0.35, 0.85]), (3e-3, [0.20, 0.80]),
                                 (4e-3, [0.25, 0.70]), (5e-3, [0.40, 0.95])])
    results = study_results(study, [("val_loss", "minimize"), ("val_accuracy", "maximize")])
    assert results["pareto_front"] == [0, 2, 4]
    assert results["best"]["number"] == 2 and results["best"]["values"] == {"val_loss": 0.20, "val_accuracy": 0.80}
    assert results["refit_rule"] == REFIT_RULE
    page = write_tuning_report(SimpleNamespace(results=results), tmp_path / "report").read_text()
    assert "Pareto front (3 trials)" in page and "2 (refit)" in page and REFIT_RULE in page
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 1000


def test_one_objective_has_no_front_and_the_best_is_the_best_value():
    from trainflow.experiments.study_results import study_results

    study = optuna.create_study(direction="maximize")
    for lr, value in ((1e-3, 0.9), (2e-3, 0.95), (3e-3, 0.93)):
        study.add_trial(create_trial(params={LR: lr}, distributions={LR: FloatDistribution(1e-4, 1e-1, log=True)},
                                     value=value))
    results = study_results(study, [("val_accuracy", "maximize")])
    assert results["pareto_front"] == [] and results["best"]["number"] == 1


@pytest.mark.parametrize("refit", ["train", "train_val"])
def test_the_refit_configuration_is_the_best_trials_and_train_val_trains_its_epochs_without_stopping_on_val(refit):
    from trainflow.experiments.tuning_run import refit_config

    config = tuning_config(trials=2, refit=refit)
    final = refit_config(config, {"params": {LR: 7e-3, "train.batch_size": 16}, "best_epoch": 2.25})
    assert final.tune is None and final.train.optimizer.learning_rate == 7e-3 and final.train.batch_size == 16
    if refit == "train":
        assert final.train.max_epochs == config.train.max_epochs
        assert final.train.early_stopping.monitor == "val_accuracy"
    else:  # val records are training records now: the best trial's epochs (rounded up), the last weights
        assert final.train.max_epochs == 3 and final.train.early_stopping.monitor == "train_loss"
