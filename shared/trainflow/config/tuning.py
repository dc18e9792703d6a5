"""The `tune` and `cross_validation` sections: a search space over config fields, and how folds are run.

    tune:
      params:
        train.optimizer.learning_rate: {float: [1.0e-5, 1.0e-2], log: true}
        train.batch_size: {categorical: [32, 64, 128]}
        model.width: {int: [16, 64], step: 16}
        train.optimizer.momentum: {float: [0.5, 0.99], when: {train.optimizer.name: sgd}}
      sampler: tpe            # tpe | random | grid | cmaes
      pruner: median          # median | successive_halving | hyperband | none
      trials: 24              # and/or wall_time_minutes
      workers: 2

Every path and range is checked against the schema itself when the config is loaded (see
`check_search_space`): a path that names no field, a range whose ends the field refuses, a
categorical value of the wrong type: one sentence naming it.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationError, model_validator

from trainflow.config.names import MAX_RUN_NAME, check_kubernetes_name, check_secret_key, path_component_name
from trainflow.config.schema_base import Section
from trainflow.metrics.metric_directions import is_lower_better

def check_study_name(value: str) -> str:
    return path_component_name("study_name", value, MAX_RUN_NAME)


# Trials share one split and one cache, so only what training reads may vary between them.
TUNABLE_SECTIONS = ("train", "model")
Scalar = bool | int | float | str | None


class ParamRange(Section):
    """One searched field: exactly one of float, int (ranges, both ends included) or categorical."""

    float_range: tuple[float, float] | None = Field(None, alias="float")
    int_range: tuple[int, int] | None = Field(None, alias="int")
    categorical: list[Scalar] | None = Field(None, min_length=1)
    log: bool = Field(False, description="float/int: sample on a log scale (both ends > 0).")
    step: float | None = Field(None, gt=0, description="float/int: spacing of the values (int default 1).")
    grid_points: int | None = Field(None, ge=2, le=10_000, description="grid sampler, float ranges: this many values, evenly spaced (log-spaced with log).")
    when: dict[str, Scalar] | None = Field(None, description="Sample only when these fields (tuned or fixed) have these values.")

    @model_validator(mode="after")
    def _one_kind(self) -> "ParamRange":
        kinds = [name for name, value in (("float", self.float_range), ("int", self.int_range),
                                          ("categorical", self.categorical)) if value is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of float: [low, high], int: [low, high] or categorical: [values]; got {', '.join(kinds) or 'none'}")
        bounds = self.float_range or self.int_range
        if bounds is not None:
            low, high = bounds
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise ValueError(f"range [{low}, {high}] must be finite with low <= high")
            if self.log and low <= 0:
                raise ValueError(f"log: true needs a range above 0, got low {low}")
            if self.log and self.step is not None:
                raise ValueError("log and step cannot go together (optuna samples a log range without steps)")
        elif self.log or self.step is not None or self.grid_points is not None:
            raise ValueError("log, step and grid_points apply to float and int ranges, not categorical")
        if self.int_range is not None and self.step is not None and not float(self.step).is_integer():
            raise ValueError(f"step {self.step} of an int range must be a whole number")
        return self

    @property
    def kind(self) -> str:
        return "float" if self.float_range is not None else "int" if self.int_range is not None else "categorical"

    def grid_values(self) -> list[Scalar] | None:
        """The values a grid search tries, or None when a float range has no grid_points or step."""
        if self.categorical is not None:
            return list(self.categorical)
        low, high = self.float_range or self.int_range  # type: ignore[misc]
        if self.int_range is not None:
            if self.log and self.grid_points is None:
                return None
            if self.grid_points is None:
                return list(range(int(low), int(high) + 1, int(self.step or 1)))
        if self.step is not None:
            count = int(math.floor((high - low) / self.step + 1e-9)) + 1
            return [low + i * self.step for i in range(count)]
        if self.grid_points is None:
            return None
        n = self.grid_points
        if self.log:
            values = [math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (n - 1)) for i in range(n)]
        else:
            values = [low + i * (high - low) / (n - 1) for i in range(n)]
        values = [min(max(v, low), high) for v in values]  # exp(log(high)) can round past high
        return sorted({int(round(v)) for v in values}) if self.int_range is not None else values


class TuneObjective(Section):
    metric: str = Field(description="A validation metric the task logs (val_loss, val_accuracy, val_mse, ...).")
    direction: Literal["minimize", "maximize"] | None = Field(None, description="Default: from the metric's name.")


class TuneStorage(Section):
    kind: Literal["journal", "rdb"] = Field("journal", description=(
        "journal: Optuna's journal file on the workspace (local: <state>/tuning/<study>/journal.log). "
        "rdb: a database URL (e.g. postgresql://...) read from the environment variable url_env; on a cluster "
        "the pipeline fills it from the Kubernetes Secret `secret` (key `secret_key`). Never a parameter."))
    url_env: str = Field("TRAINFLOW_OPTUNA_STORAGE", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    secret: Annotated[str, AfterValidator(check_kubernetes_name)] | None = Field(None, description="Kubernetes Secret holding the database URL (cluster runs, kind rdb).")
    secret_key: Annotated[str, AfterValidator(check_secret_key)] = "url"


class TuneConfig(Section):
    params: dict[str, ParamRange] = Field(min_length=1, description="Config field path -> range, sampled in this order.")
    objectives: list[TuneObjective] | None = Field(None, min_length=1, description=(
        "Default: train.early_stopping.monitor. Several: a multi-objective study (Pareto front); the refit takes "
        "the Pareto-optimal trial best on the first objective."))
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    pruner: Literal["median", "successive_halving", "hyperband", "none"] | None = Field(
        None, description="Default: median with one objective; none with several (Optuna prunes single-objective studies only).")
    pruner_startup_trials: int = Field(4, ge=0, le=1_000_000, description="median: trials that finish before any is pruned.")
    pruner_warmup_epochs: float = Field(0.0, ge=0, le=1_000_000, allow_inf_nan=False, description=(
        "median: epochs of training data a trial sees before it can be pruned (fractions allowed). Trials are "
        "compared at equal epochs, not optimizer steps, so a searched batch size does not skew the comparison."))
    trials: int | None = Field(20, ge=1, le=1_000_000, description="Finished trials (complete, pruned or failed) the study runs to.")
    wall_time_minutes: float | None = Field(None, gt=0, le=1e7, description="Each worker starts no new trial after this long.")
    workers: int = Field(1, ge=1, le=64, description="Trial workers asking the shared study (ParallelFor parallelism).")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Sampler seed (default: the run's seed).")
    study_name: Annotated[str, AfterValidator(check_study_name)] | None = Field(None, description=(
        "Default: the run_name. Same rule: a folder name under <state>/tuning."))
    refit: Literal["train", "train_val"] = Field("train", description=(
        "Train the best configuration as the final model on train (early stopping on val), or on train+val for "
        "the best trial's number of epochs."))
    stale_after_seconds: float = Field(120.0, ge=5, le=1e7, description=(
        "A running trial whose worker wrote no heartbeat for this long is taken as killed: it is re-queued with "
        "the same parameters and resumes from its checkpoints."))
    storage: TuneStorage = TuneStorage()

    @model_validator(mode="after")
    def _has_a_budget(self) -> "TuneConfig":
        if self.trials is None and self.wall_time_minutes is None:
            raise ValueError("set trials, wall_time_minutes or both: the study needs a budget")
        if self.storage.kind == "journal" and self.storage.secret:
            raise ValueError("storage.secret applies to kind rdb; a journal lives on the workspace")
        return self


class CrossValidationConfig(Section):
    folds: int | None = Field(None, ge=2, le=100, description="Default: ingest.split.folds, else 5.")
    kind: Literal["kfold", "stratified_kfold"] | None = Field(None, description=(
        "Default: ingest.split.kind when it is a k-fold kind, else stratified_kfold for classification and kfold "
        "otherwise. With ingest.group_column the folds keep groups whole (group k-fold)."))
    repeats: int = Field(1, ge=1, le=20, description="Repeated k-fold: cut the same non-test records into folds this many times, seed + r.")
    workers: int = Field(1, ge=1, le=64, description="Folds trained at once (ParallelFor parallelism).")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Level of the t-interval of each metric across folds.")
    nested: bool = Field(False, description=(
        "Tune inside each outer fold: the tune section's study runs on the fold's training records (trials scored "
        "on its inner validation part), the best configuration is trained there and scored on the held-out fold, "
        "so the interval estimates the whole tune-then-train procedure. Needs a tune section."))


# ---------------------------------------------------------------- schema checks (called by RunConfig)
def task_validation_metrics(task: str) -> tuple[str, ...]:
    """What the task's validation logs (its definition in trainflow.tasks says)."""
    from trainflow.tasks import get_task

    return get_task(task).validation_metrics


def objective_directions(tune: TuneConfig, monitor: str) -> list[tuple[str, str]]:
    """[(metric, 'minimize' | 'maximize')] for the study, defaults filled in."""
    objectives = tune.objectives or [TuneObjective(metric=monitor)]
    out = []
    for objective in objectives:
        direction = objective.direction or ("minimize" if is_lower_better(objective.metric) else "maximize")
        out.append((objective.metric, direction))
    return out


def _field_at(model: type[BaseModel], path: str) -> Any:
    """The pydantic FieldInfo at a dotted path; ValueError naming the first part that does not exist."""
    current: Any = model
    parts = path.split(".")
    for depth, part in enumerate(parts):
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            known = ", ".join(sorted(fields)) if fields else "none (not a section)"
            raise ValueError(f"tune.params.{path}: {'.'.join(parts[:depth + 1])} is not a config field; known keys there: {known}")
        field = fields[part]
        if depth < len(parts) - 1:
            current = next((a for a in typing.get_args(field.annotation) or (field.annotation,)
                            if isinstance(a, type) and issubclass(a, BaseModel)), None)
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
        raise ValueError(f"tune.params.{path}: names a whole section; name one field in it")
    return field


def _base_types(annotation: Any) -> set[type]:
    """The scalar types a field accepts: int, float, str, bool (None dropped)."""
    if typing.get_origin(annotation) is Literal:
        return {type(value) for value in typing.get_args(annotation)}
    args = typing.get_args(annotation)
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_base_types(a) for a in args if a is not type(None)))
    return {annotation} if isinstance(annotation, type) else {object}


def _type_fits(value: Any, accepted: set[type]) -> bool:
    if value is None:
        return True  # whether the field is nullable is pydantic's to say
    if isinstance(value, bool):
        return bool in accepted
    if isinstance(value, int):
        return bool(accepted & {int, float})
    if isinstance(value, float):
        return float in accepted
    return type(value) in accepted


def _set_path(payload: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = payload
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _get_path(payload: dict[str, Any], path: str) -> Any:
    node: Any = payload
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def check_search_space(run_config_type: type[BaseModel], payload: dict[str, Any], tune: TuneConfig, task: str,
                       monitor: str) -> None:
    """Raise ValueError (one sentence naming the field) when a path, range or value does not fit the schema.

    Each range's ends and each categorical value are put into the config and the whole config is validated
    again (without `tune`), so the field's own bounds and cross-field rules decide; types are compared first,
    because pydantic's lax mode would turn '0.1' into a float.
    """
    base = {k: v for k, v in payload.items() if k not in ("tune", "cross_validation")}
    for path, spec in tune.params.items():
        if path.split(".")[0] not in TUNABLE_SECTIONS:
            raise ValueError(f"tune.params.{path}: only train.* and model.* fields can be tuned; every trial reads "
                             "the same split and cache")
        field = _field_at(run_config_type, path)
        accepted = _base_types(field.annotation)
        if spec.kind in ("float", "int") and not accepted & {int, float} - {bool}:
            raise ValueError(f"tune.params.{path}: a {spec.kind} range needs a numeric field, but it holds "
                             f"{'/'.join(sorted(t.__name__ for t in accepted))}; use categorical")
        if spec.kind == "float" and float not in accepted:
            raise ValueError(f"tune.params.{path}: the field takes whole numbers; use int: [low, high]")
        candidates = list(spec.categorical) if spec.categorical is not None else list(spec.float_range or spec.int_range or ())
        for value in candidates:
            if not _type_fits(value, accepted):
                raise ValueError(f"tune.params.{path}: value {value!r} is a {type(value).__name__}, but the field "
                                 f"takes {'/'.join(sorted(t.__name__ for t in accepted))}")
            trial_payload = _deep_copy(base)
            _set_path(trial_payload, path, value)
            try:
                run_config_type.model_validate(trial_payload)
            except ValidationError as exc:
                problem = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
                raise ValueError(f"tune.params.{path}: value {value!r} is outside what the field accepts ({problem})") from None
        for condition in (spec.when or {}):
            if condition == path:
                raise ValueError(f"tune.params.{path}: when cannot name the parameter itself")
            _field_at(run_config_type, condition)
    _check_objectives(tune, task, monitor)
    _check_sampler(tune)


def _check_objectives(tune: TuneConfig, task: str, monitor: str) -> None:
    logged = task_validation_metrics(task)
    metrics = [objective.metric for objective in tune.objectives] if tune.objectives else [monitor]
    for metric in metrics:
        if metric not in logged:
            where = "tune.objectives" if tune.objectives else "tune.objectives (default: train.early_stopping.monitor)"
            raise ValueError(f"{where}: trials are scored on validation metrics; task {task} validates "
                             f"{', '.join(logged)}, not {metric!r}")
    if tune.objectives and len(tune.objectives) > 1 and tune.pruner not in (None, "none"):
        raise ValueError(f"tune.pruner: {tune.pruner} needs one objective (Optuna prunes single-objective studies "
                         "only); set pruner: none or keep one objective")


def _check_sampler(tune: TuneConfig) -> None:
    if tune.sampler == "grid":
        for path, spec in tune.params.items():
            if spec.when:
                raise ValueError(f"tune.params.{path}: the grid sampler tries every combination, so it cannot "
                                 "take conditional parameters; drop `when` or use tpe/random")
            if spec.grid_values() is None:
                raise ValueError(f"tune.params.{path}: the grid sampler needs discrete values; give grid_points "
                                 "or step, or use categorical")
    if tune.sampler == "cmaes":
        categorical = [path for path, spec in tune.params.items() if spec.kind == "categorical" or spec.when]
        if categorical:
            raise ValueError(f"tune.sampler: cmaes searches numeric ranges only, but tune.params.{categorical[0]} is "
                             "categorical or conditional; use tpe, random or grid")
        if (tune.objectives and len(tune.objectives) > 1):
            raise ValueError("tune.sampler: cmaes is single-objective; use tpe or random with several objectives")


def _deep_copy(payload: Any) -> Any:
    if isinstance(payload, dict):
        return {k: _deep_copy(v) for k, v in payload.items()}
    if isinstance(payload, list):
        return [_deep_copy(v) for v in payload]
    return payload


def apply_params(payload: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of a run config payload with each `path: value` set."""
    out = _deep_copy(payload)
    for path, value in params.items():
        _set_path(out, path, value)
    return out


def condition_holds(spec: ParamRange, chosen: dict[str, Any], payload: dict[str, Any]) -> bool:
    """Whether a conditional parameter is sampled, given the values chosen so far and the config's own."""
    for path, wanted in (spec.when or {}).items():
        value = chosen[path] if path in chosen else _get_path(payload, path)
        if value != wanted:
            return False
    return True
