"""What a task tells the rest of trainflow: the one interface that stages, config checks, reports and the registry ask.

A task is one module under `trainflow.tasks` with one `TaskDefinition` subclass, registered in
`trainflow.tasks.registry`. Everything that differs by task lives there and is asked for, never
branched on: which config fields it needs (and the sentence when they are missing), the validation
metrics it logs, the records it expects and its cache, its trainable object for the engine, its
test-time outputs and metrics, its headline metrics, and how to load an exported model folder back
to predict. A definition holds no state; `training_task(...)` builds the object the engine trains
(`trainflow.training.task.Task`).
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from trainflow.metrics.metric_directions import is_lower_better

if TYPE_CHECKING:
    import torch

    from trainflow.config import CacheConfig, EvaluateConfig, IngestConfig, ModelConfig, RunConfig, TrainConfig
    from trainflow.data.checks.record_validation import IngestRecord
    from trainflow.evaluation.checkpoint_models import LastCheckpoint
    from trainflow.evaluation.record_outputs import RecordOutputs
    from trainflow.training.task import Task

MetricFunction = Callable[..., dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """A metric as a person reads it: its key in the results, a label, and (from the one table) its direction."""

    key: str
    label: str

    @property
    def lower_is_better(self) -> bool:
        return is_lower_better(self.key)

    @property
    def better_is(self) -> str:
        return "lower" if self.lower_is_better else "higher"


@dataclasses.dataclass(frozen=True)
class Reference:
    """Another model or method scored on the same test split.

    label: what a person reads; prefix: of its numbers in the results (`base_fid`, `baseline_linear_r2`);
    source: its name among a RecordOutputs' sources, when it is scored per record; column: its summary column.
    """

    label: str
    prefix: str
    source: str | None = None
    column: str | None = None


@dataclasses.dataclass(frozen=True)
class RecordNeeds:
    """What ingest requires of each record for this task.

    required: record fields a record is rejected without (caption, label, targets, mask, text).
    classes_of: what class names describe ('labels', 'masks') or None when the task has no classes.
    counts_caption_tokens: warn about captions longer than the text encoder reads.
    images: the task reads images only; a source of feature rows is refused before anything is written.
    """

    required: frozenset[str] = frozenset()
    classes_of: str | None = None
    counts_caption_tokens: bool = False
    images: bool = False


@dataclasses.dataclass(frozen=True)
class HiddenLabels:
    """Train records whose label the ingest snapshot leaves out, and how they were chosen.

    ids: their record ids (the manifest writes them with `unlabelled: true` and no label).
    how: for the ingest report, e.g. "ingest.labelled_fraction 0.1, stratified, seeded".
    """

    ids: frozenset[str]
    how: str


@dataclasses.dataclass
class TestRequest:
    """What the evaluate stage gives a task to score the test split."""

    cache_dir: Path
    model_dir: Path
    model_cfg: "ModelConfig"
    evaluate_cfg: "EvaluateConfig"
    seed: int
    record: dict[str, Any]  # the train stage's trainflow_training.json
    device: torch.device
    last: "LastCheckpoint"  # the last checkpoint, verified, or why it cannot be scored (the task may add a reason)


@dataclasses.dataclass(frozen=True)
class ServingTensor:
    """An array input or output: numpy dtype name and shape (-1 where any size fits, the batch first)."""

    dtype: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ServingSchema:
    """What a registered version takes and returns, in plain terms (the registry turns it into an MLflow signature).

    inputs / outputs: columns {name: type} (type: 'double', 'long', 'string') or one ServingTensor.
    params: what a request may set beside the inputs, name -> default (int, float or str).
    example: a small real input (a pandas DataFrame or a numpy array) built from the model folder, or
      (input, params) when the example request sets parameters.
    optional_outputs: output columns present only when a request parameter asks for them.
    """

    inputs: dict[str, str] | ServingTensor
    outputs: dict[str, str] | ServingTensor
    params: dict[str, Any]
    example: Any
    optional_outputs: frozenset[str] = frozenset()


class Predictor(Protocol):
    """An exported model folder loaded back: what `trainflow compare`, the champion gate and serving call."""

    task: str
    names: list[str]  # class or target names (empty when the outputs have none)

    def predict(self, inputs: Any) -> Any:
        """What a person reads for the inputs the task ingests (probabilities, values, class maps, images)."""

    def record_outputs(self, cache_dir: Path, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(per-record outputs, truth) on a cache's test split, in record order, as `RecordOutputs` stores them."""


class TaskDefinition(abc.ABC):
    """The base every task module subclasses; the defaults are what most tasks want, the abstract methods are not optional."""

    name: str
    description: str
    pipeline: str  # the pipeline that runs it (a key of trainflow.kubeflow.pipeline_package.PIPELINES)
    validation_metrics: tuple[str, ...]  # what validation logs (val_*): what train.early_stopping.monitor may name
    headline_metrics: tuple[MetricSpec, ...]  # intervals, best-vs-last, the report's table; the first is compare's default
    summary_metrics: tuple[MetricSpec, ...] = ()  # the local run's summary rows (default: headline_metrics)
    output_names: tuple[str, str | None]  # metric-function argument names: (model outputs, ground truth or None)
    record_needs: RecordNeeds = RecordNeeds()
    reference: Reference | None = None  # a model scored per record beside the trained one (text-to-image: the base)
    trained_label: str = "value"  # the trained model's column in the summary when there is a reference
    baselines: tuple[Reference, ...] = ()  # methods fitted on the same split, shown under each summary row
    compares_per_record: bool = False  # per-record outputs a paired comparison can use (compare, beat_champion)
    generates_images: bool = False  # the pipeline has a score stage that needs generation weights
    # The task-specific config fields it reads ('ingest.text_column', 'train.autoencoder'): of those declared with
    # trainflow.config.task_fields.task_field; any other task's config that sets one is refused with its sentence.
    config_fields: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ config
    def check_task_fields(self, ingest: "IngestConfig | None", model: "ModelConfig | None",
                          train: "TrainConfig | None") -> None:
        """ValueError when a section sets a task-specific field this task does not read (not in config_fields).

        Checked before `check_config`, with the sentence the field declares (trainflow.config.task_fields).
        """
        from trainflow.config.task_fields import set_task_fields

        for prefix, section in (("ingest", ingest), ("model", model), ("train", train)):
            for field, elsewhere in set_task_fields(section) if section is not None else ():
                if f"{prefix}.{field}" not in self.config_fields:
                    raise ValueError(f"{prefix}.{field}: {elsewhere.format(task=self.name)}")

    def check_config(self, ingest: "IngestConfig | None", model: "ModelConfig | None", train: "TrainConfig | None") -> None:
        """Raise ValueError, one sentence naming the field, when a section asks for what this task cannot do.

        Stages call it with the sections they receive, so a config edited in the Kubeflow UI fails like a local one.
        """
        if train is not None:
            if train.validation_prompts is not None and not self.generates_images:
                raise ValueError(f"train.validation_prompts: task {self.name} does not generate images; remove them")
            known = self.validation_metrics + ("train_loss",)
            monitor = train.early_stopping.monitor
            if monitor not in known:
                raise ValueError(f"train.early_stopping.monitor: task {self.name} does not log {monitor!r}; choose one "
                                 f"of {', '.join(known)}")

    def check_run_config(self, config: "RunConfig") -> None:
        """Checks across sections of a whole run config (ValueError naming the field)."""
        if not self.compares_per_record and any(gate.beat_champion for gate in config.registration.gates):
            raise ValueError(f"register.gates: beat_champion compares per-record test outputs, which {self.name} "
                             "does not keep; use beat_base, min or max")

    def local_paths(self, config: "RunConfig") -> dict[str, str]:
        """Config fields holding local paths this task reads (field -> path), checked to exist at load time."""
        return {}

    def check_local_files(self, config: "RunConfig") -> None:
        """Checks of local files' contents at load time (after local_paths exist); ConfigError naming the field."""

    # ------------------------------------------------------------------ data and training
    def hidden_train_labels(self, records: "list[IngestRecord]", assignment: dict[str, str], ingest: "IngestConfig",
                            seed: int) -> HiddenLabels | None:
        """Train records whose label ingest leaves out of the snapshot (a task that learns from unlabelled records).

        records: the checked records; assignment: record id -> split. Must be a pure function of its inputs, so
        the same inputs give the same manifest. Default None: every record keeps its label.
        """
        return None

    @abc.abstractmethod
    def build_cache(self, dataset_dir: str, cache_dir: str, model_cfg: "ModelConfig", cache_cfg: "CacheConfig") -> dict[str, Any]:
        """Encode or decode every record of the ingest snapshot once into `cache_dir`; returns its metadata."""

    @abc.abstractmethod
    def training_task(self, cache_dir: Path, model_cfg: "ModelConfig", train_cfg: "TrainConfig", seed: int) -> "Task":
        """The object the engine trains (model, data, one training and one validation step, export)."""

    # ------------------------------------------------------------------ evaluation
    @abc.abstractmethod
    def test_outputs(self, request: TestRequest) -> "RecordOutputs":
        """Per-record test outputs of the best checkpoint (and the last one, and references) for metrics and comparison."""

    @abc.abstractmethod
    def metric_function(self, names: list[str]) -> MetricFunction:
        """The task's metrics over records, bound to its class or target names (what bootstrap and comparison call)."""

    def extra_results(self, cache_dir: Path, model_dir: Path, metric_fn: MetricFunction) -> dict[str, Any]:
        """Numbers beside the model's own (e.g. a baseline fitted on the same split); default none."""
        return {}

    def report_section(self, scored: "RecordOutputs", results: dict[str, Any]) -> str:
        """The task's own part of the evaluation report (HTML); default none."""
        return ""

    def log_kfp_metrics(self, artifact: Any, scored: "RecordOutputs", results: dict[str, Any]) -> bool:
        """Fill a KFP visualisation artifact (e.g. ClassificationMetrics); False when the task has none."""
        return False

    @abc.abstractmethod
    def load_for_prediction(self, folder: Path) -> Predictor:
        """The exported model folder loaded back to predict."""

    def serving_schema(self, folder: Path) -> ServingSchema:
        """What a registered version of the model in `folder` takes and returns (the registry's MLflow signature).

        A task without a serving form cannot be registered: UserFacingError saying so.
        """
        from trainflow.errors import UserFacingError

        raise UserFacingError(f"task {self.name} does not define what its registered model takes and returns "
                              "(serving_schema and serve), so it cannot be registered as an MLflow Model")

    def serve(self, predictor: Predictor, model_input: Any, params: dict[str, Any]) -> Any:
        """Predictions for one request: `model_input` as `serving_schema` describes it; UserFacingError for a bad one."""
        from trainflow.errors import UserFacingError

        raise UserFacingError(f"task {self.name} cannot serve predictions (it defines no serve)")

    # ------------------------------------------------------------------ derived
    def rows_for_summary(self) -> tuple[MetricSpec, ...]:
        return self.summary_metrics or self.headline_metrics

    def headline_keys(self) -> list[str]:
        return [spec.key for spec in self.headline_metrics]


def predictor_test_outputs(task: TaskDefinition, request: TestRequest):
    """Per-record test outputs of the exported best model and, when it fits the model, the last checkpoint.

    For tasks whose predictor (from `load_for_prediction`) has `model`, `names` and
    `record_outputs(cache_dir, batch_size, device) -> (outputs, truth)`. A last checkpoint that does not
    fit is dropped with its reason on `request.last`, so the report says why only the best was scored.
    """
    from trainflow.data.cache.attrs import read_cache_dataset_hash
    from trainflow.evaluation.checkpoint_models import load_checkpoint_weights
    from trainflow.evaluation.record_outputs import RecordOutputs, test_record_ids

    predictor = task.load_for_prediction(request.model_dir)
    batch_size, last = request.evaluate_cfg.batch_size, request.last
    best, truth = predictor.record_outputs(request.cache_dir, batch_size, request.device)
    outputs = {"best": best}
    if last.checkpoint is not None:
        try:
            rebuilt = task.load_for_prediction(request.model_dir)
            rebuilt.model = load_checkpoint_weights(rebuilt.model, last.checkpoint)
            outputs["last"] = rebuilt.record_outputs(request.cache_dir, batch_size, request.device)[0]
        except ValueError as error:
            last.reason, last.checkpoint = f"the last checkpoint does not fit the model ({error})", None
    return RecordOutputs(task.name, predictor.names, truth, outputs, test_record_ids(request.cache_dir),
                         read_cache_dataset_hash(request.cache_dir))
