"""Samplers and pruners by name, each trial's sampler seeded from (seed, trial number).

Seeding per trial, rather than once per process, is what makes a resumed study propose what an
uninterrupted one would: a restarted worker's sampler does not replay its random stream from the
start, it derives trial N's stream from N. With one worker, two runs with the same seed propose the
same trials (with several, the order in which workers finish changes what TPE has seen).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import optuna
from optuna.samplers import BaseSampler

from trainflow.config.tuning import TuneConfig
from trainflow.errors import UserFacingError
from trainflow.experiments.search_space import grid_search_space


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, number]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """Wraps a sampler built fresh for each trial by `build(seed)`, with the seed derived from the trial number."""

    def __init__(self, build: Callable[[int], BaseSampler], seed: int) -> None:
        self._build, self._seed = build, seed
        self._inner = build(seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._inner = self._build(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its stop at the end of the grid.

    GridSampler.after_trial calls Study.stop once every point is tried, which raises outside study.optimize;
    trainflow's workers ask and tell, and trial_budget already caps a grid study at the grid's size.
    """

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any) -> None:
        return None


def check_sampler_installed(tune: TuneConfig) -> None:
    """UserFacingError when the chosen sampler needs a package this environment lacks (cmaes for CMA-ES).

    Called before a study prepares its data, so the one sentence comes before any work is done.
    """
    if tune.sampler != "cmaes":
        return
    try:
        import cmaes  # noqa: F401  optuna's CmaEsSampler imports it lazily, at the first relative sample
    except ImportError:
        raise UserFacingError("tune.sampler: cmaes needs the `cmaes` package, which is not installed here; use tpe, "
                              "random or grid, or pip install cmaes into this environment") from None


def _factory(tune: TuneConfig, workers: int) -> Callable[[int], BaseSampler]:
    if tune.sampler == "random":
        return lambda seed: optuna.samplers.RandomSampler(seed=seed)
    if tune.sampler == "grid":
        space = grid_search_space(tune)
        return lambda seed: AskTellGridSampler(space, seed=seed)
    if tune.sampler == "cmaes":
        check_sampler_installed(tune)
        return lambda seed: optuna.samplers.CmaEsSampler(seed=seed)
    # constant_liar: with several workers, running trials count as bad guesses, so workers spread out.
    # Optuna 5's TPE is multivariate by default (its `multivariate` argument is kept for history only).
    return lambda seed: optuna.samplers.TPESampler(seed=seed, constant_liar=workers > 1)


def build_sampler(tune: TuneConfig, seed: int, workers: int) -> BaseSampler:
    if tune.sampler == "grid":
        # Not re-seeded per trial: GridSampler shuffles its grid by the seed once and hands out grid ids from
        # the study's trials, so a sampler built with another seed would map the same id to another point
        # (trials repeating a point, points never tried). One seed keeps the order, across resumes too.
        return _factory(tune, workers)(seed)
    return TrialSeededSampler(_factory(tune, workers), seed)


# Validations are reported to the pruner at thousandths of an epoch of training data seen. Optimizer steps
# would compare unlike trials: with the batch size searched, step 40 is five epochs for one trial and one for
# another, and the median pruner compares a trial only with trials that reported at the same step.
PRUNING_STEPS_PER_EPOCH = 1000


def pruning_step(epoch: float) -> int:
    return int(round(epoch * PRUNING_STEPS_PER_EPOCH))


def pruner_name(tune: TuneConfig) -> str:
    if tune.pruner is not None:
        return tune.pruner
    return "median" if not tune.objectives or len(tune.objectives) == 1 else "none"


def build_pruner(tune: TuneConfig) -> optuna.pruners.BasePruner:
    name = pruner_name(tune)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.pruner_startup_trials,
                                           n_warmup_steps=pruning_step(tune.pruner_warmup_epochs))
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()
