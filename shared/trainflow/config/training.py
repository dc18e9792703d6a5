"""The `train` section: the engine's settings (shared by every task) plus task-specific blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import Field, field_validator, model_validator

from trainflow.config.data_loading import DataLoadingConfig, TransformsConfig, WorkerCount
from trainflow.config.platform import DistributedConfig
from trainflow.config.names import PlainText
from trainflow.config.schema_base import Section
from trainflow.config.task_fields import task_field

# Upper bounds of counts: far above any real run, low enough that a typo (an extra few zeros, a pasted
# timestamp) fails in `validate` rather than as an overflow or a years-long loop after the data is cached.
MAX_STEPS = 1_000_000_000
MAX_COUNT = 1_000_000
MAX_BATCH = 1_000_000

SCHEDULES = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
    "one_cycle", "step", "reduce_on_plateau",
)


class OptimizerConfig(Section):
    name: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    learning_rate: float = Field(1e-4, gt=0, le=10)
    weight_decay: float = Field(1e-2, ge=0, le=10)
    betas: tuple[Annotated[float, Ge(0), Lt(1)], Annotated[float, Ge(0), Lt(1)]] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop.")
    nesterov: bool = False
    # Norm weights and biases are usually excluded from weight decay; turn off to decay everything.
    no_decay_on_norms_and_biases: bool = True
    # Learning rate per module, by parameter-name prefix (longest prefix wins), e.g. {"head": 1e-2}.
    module_learning_rates: dict[str, Annotated[float, Gt(0), Le(10)]] = {}


class ScheduleConfig(Section):
    """Counted in optimizer steps, so accumulation and world size neither stretch nor shrink it."""

    name: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
        "one_cycle", "step", "reduce_on_plateau",
    ] = "cosine"
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS)
    num_cycles: float = Field(1.0, gt=0, le=10_000, description=(
        "cosine: half-waves of the cosine (1 = one decay from the peak to 0); cosine_with_restarts: number of restarts."))
    power: float = Field(1.0, gt=0, le=100, description="polynomial decay power.")
    lr_end: float = Field(1e-7, ge=0, le=10, description="polynomial: final learning rate.")
    step_size: int = Field(1000, ge=1, le=MAX_STEPS, description="step: optimizer steps between decays.")
    gamma: float = Field(0.1, gt=0, le=1, description="step and reduce_on_plateau: decay factor.")
    pct_start: float = Field(0.3, gt=0, lt=1, description="one_cycle: share of steps spent increasing.")
    plateau_patience: int = Field(2, ge=0, le=MAX_COUNT, description="reduce_on_plateau: validations without improvement before decaying.")


class ValidationConfig(Section):
    every_n_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Validate every N optimizer steps (in addition to epoch ends if every_epoch).")
    every_epoch: bool = True

    @model_validator(mode="after")
    def _some_validation(self) -> "ValidationConfig":
        if not self.every_epoch and self.every_n_steps is None:
            raise ValueError("set every_n_steps or every_epoch: training needs validation for early stopping and the best checkpoint")
        return self


class PlateauRule(Section):
    window: int = Field(5, ge=2, le=MAX_COUNT, description="Validations to look back over.")
    threshold: float = Field(1e-3, gt=0, description="Stop when the relative change over the window is below this.")


class OverfittingRule(Section):
    window: int = Field(3, ge=2, le=MAX_COUNT, description="Stop when, over this many validations, validation worsens while training improves.")


class EarlyStoppingConfig(Section):
    monitor: str = Field("val_loss", description="Any logged validation metric, e.g. val_loss, val_accuracy, val_f1_macro.")
    mode: Literal["min", "max"] | None = Field(None, description="Default: max for accuracy/F1/IoU/R2-like metrics, min otherwise.")
    patience: int | None = Field(5, ge=1, le=MAX_COUNT, description="Validations without an improvement of more than min_delta before stopping; null turns it off.")
    min_delta: float = Field(0.0, ge=0, description="Decides patience only; the best checkpoint is always the best value.")
    plateau: PlateauRule | None = None
    overfitting: OverfittingRule | None = None
    divergence_factor: float | None = Field(None, gt=1, description="min mode: stop when the metric exceeds factor × best (max mode: falls below best / factor).")
    target: float | None = Field(None, description="Stop as soon as the monitored metric reaches this value.")


class CheckpointConfig(Section):
    every_n_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Also checkpoint every N optimizer steps (always at each epoch end).")
    keep_top_k: int = Field(1, ge=1, le=1000, description="Keep the k best checkpoints by the monitored metric, plus the newest.")
    total_limit: int = Field(3, ge=2, le=1000, description="Never keep more than this many checkpoints.")


class LoggingConfig(Section):
    every_n_steps: int = Field(10, ge=1, le=MAX_STEPS, description="TensorBoard/MLflow scalars every N optimizer steps.")
    tensorboard: bool = True
    mlflow: bool = Field(False, description="Log step metrics to MLflow (needs MLFLOW_TRACKING_URI or register.tracking_uri).")
    sample_images: int = Field(4, ge=0, le=64, description="Images generated at each validation into TensorBoard, by tasks that "
                               "generate images (text_to_image: the first val captions, fixed seed); 0 turns them off.")
    # Off by default: a training process opens no network listener unless asked (laptops, shared CI machines,
    # several local runs at once); a cluster config turns it on with one line, and the pods expose it.
    prometheus_port: int | None = Field(None, ge=0, le=65535, description=(
        "Serve Prometheus metrics (loss, learning rate, samples/s, data wait, validation, best value, early stops, "
        "checkpoint seconds, GPU memory) on http://0.0.0.0:<port + local rank>/metrics; null or 0 turns it off; "
        "9464 is a usual choice."))


class PreemptionConfig(Section):
    """What the engine does on SIGTERM (a pod evicted, a node drained, a spot instance reclaimed)."""

    # Kubernetes waits terminationGracePeriodSeconds (30 s unless set) between SIGTERM and SIGKILL: 25 s leaves
    # time for the process to exit. trainflow's training-job pods get grace_seconds + 10 s.
    grace_seconds: float = Field(25.0, gt=0, le=3600, description=(
        "After SIGTERM: finish the optimizer step, then write a checkpoint if the last checkpoint's write time fits "
        "in what is left of this budget, and exit with code 143 (retriable)."))


class EmaConfig(Section):
    """An exponential moving average of the trained weights (diffusers' EMAModel), saved in every checkpoint.
    Validation, validation prompts and the exported model use the EMA weights when EMA is on."""

    decay: float = Field(0.9999, gt=0, lt=1, description="Per EMA update (so per update_every optimizer steps).")
    update_every: int = Field(1, ge=1, description="Update the average every N optimizer steps (cheaper for big models).")
    on_cpu: bool = Field(False, description=(
        "Keep the average in CPU memory between updates (frees a model's worth of GPU memory; each update copies "
        "it to the GPU and back). Nothing changes on a CPU run."))


class SpeedConfig(Section):
    """Switches that change speed or memory, not what is learned (beyond float rounding). See README, Speed options;
    the defaults follow bench_train --compare-options on a 2-core CPU; the GPU-only ones are off until measured."""

    tf32: bool = Field(False, description=(
        "TensorFloat-32 matmuls and convolutions on NVIDIA Ampere or newer; a logged no-op elsewhere."))
    compile: bool = Field(False, description=(
        "torch.compile the model's compute (the UNet for text_to_image); when the compiler is unavailable or fails, "
        "one message and training runs uncompiled."))
    fused_optimizer: bool = Field(False, description="Fused AdamW/Adam kernels (CUDA only; a logged no-op elsewhere).")
    channels_last: bool = Field(False, description="Channels-last memory format for the model's convolutions.")
    adamw_8bit: bool = Field(False, description=(
        "bitsandbytes' 8-bit AdamW (optimizer.name adamw, CUDA with bitsandbytes installed); elsewhere one message "
        "and torch's AdamW."))


class LoraConfig(Section):
    rank: int = Field(8, ge=1, le=4096)
    alpha: float | None = Field(None, gt=0, le=100_000, description="Default: equal to rank.")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]
    merge: bool = Field(False, description="Export a full UNet with the adapter merged instead of the adapter file.")


class PriorPreservationConfig(Section):
    """How class images (ingest.prior_preservation) mix into training, the DreamBooth way."""

    ratio: float | None = Field(None, gt=0, lt=1, description=(
        "Share of each epoch's training records that are class images (e.g. 0.5: as many as instance records, "
        "DreamBooth's 1:1); default: all class images once per epoch, times `repeats`."))
    repeats: int = Field(1, ge=1, le=MAX_COUNT, description="Times each class image is drawn per epoch (when ratio is not set).")
    loss_weight: float = Field(1.0, ge=0, le=1000, description="Weight of a class image's loss against an instance image's 1.")

    @model_validator(mode="after")
    def _one_way_to_size(self) -> "PriorPreservationConfig":
        if self.ratio is not None and self.repeats != 1:
            raise ValueError("prior_preservation: set ratio (a share of each epoch) or repeats (times per epoch), not both")
        return self


class DiffusionTrainingConfig(Section):
    # Share of training captions replaced by the empty caption, so the model also
    # learns the unconditional prediction that classifier-free guidance needs.
    caption_dropout: float = Field(0.1, ge=0, lt=1)
    snr_gamma: float | None = Field(None, gt=0, le=1000, description="Min-SNR-gamma loss weighting (5.0 is the usual value).")
    noise_offset: float = Field(0.0, ge=0, le=10, description="Offset noise strength (0.05-0.1 helps very dark/bright images).")
    input_perturbation: float = Field(0.0, ge=0, le=10, description="Extra noise on the noisy input (0.1 in the paper).")
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    train_text_encoder: bool = False
    text_encoder_learning_rate: float | None = Field(None, gt=0, le=10, description="Default: the optimizer's learning rate.")
    repeats: int = Field(1, ge=1, le=MAX_COUNT, description="Times each training image (not class image) is drawn per epoch.")
    prior_preservation: PriorPreservationConfig | None = Field(None, description=(
        "Mixing of the class images ingest.prior_preservation added (needs them in the cache); without this block "
        "they train like the other images, once per epoch, at weight 1."))


class AutoencoderConfig(Section):
    """task autoencoder: the convolutional autoencoder and what it is trained on."""

    latent_dim: int = Field(16, ge=1, description="Size of the code the encoder compresses each image to.")
    variational: bool = Field(False, description="A variational autoencoder: the code is sampled (reparameterised) "
                              "and the loss adds kl_weight × the KL divergence to a standard normal.")
    kl_weight: float = Field(1e-3, ge=0, description="variational: weight of the KL term beside the per-pixel MSE.")
    anomaly_class: str | int | None = Field(None, description=(
        "Anomaly mode: train and validate on every class but this one (a class name, or its index), and report "
        "the ROC-AUC of the reconstruction error for this class against the others on the test split."))


class SemiSupervisedConfig(Section):
    """task semi_supervised: confidence-thresholded pseudo-labels on the records ingest left unlabelled."""

    unlabelled_ratio: int = Field(7, ge=0, description=(
        "Unlabelled records per labelled record in each batch (FixMatch's mu); 0 trains on the labelled records alone."))
    confidence_threshold: float = Field(0.95, gt=0, le=1, description=(
        "An unlabelled record is trained on the class the model gives at least this probability; below it, not at all."))
    unlabelled_weight: float = Field(1.0, ge=0, description="Weight of the pseudo-label loss beside the labelled loss.")


class LossConfig(Section):
    name: Literal["cross_entropy", "focal", "mse", "l1", "huber", "cross_entropy_dice", "custom"] | None = Field(
        None, description="Default: cross_entropy (classification), mse (regression), cross_entropy_dice (segmentation).")
    class_weights: Literal["balanced"] | list[Annotated[float, Ge(0), Le(1e6)]] | None = Field(None, description="'balanced' = inverse class frequency in the train split.")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    focal_gamma: float = Field(2.0, ge=0, le=100)
    huber_delta: float = Field(1.0, gt=0, le=1e6)
    target_weights: list[Annotated[float, Ge(0), Le(1e6)]] | None = Field(None, description="Regression: weight per target column.")
    dice_weight: float = Field(1.0, ge=0, le=1000, description="Segmentation: weight of the Dice term beside cross-entropy.")
    custom: PlainText | None = Field(None, description="'package.module:function' taking (outputs, targets) and returning a scalar loss.")

    @model_validator(mode="after")
    def _custom_needs_path(self) -> "LossConfig":
        if (self.name == "custom") != (self.custom is not None):
            raise ValueError("name: custom and custom: 'package.module:function' go together")
        return self


MAX_VALIDATION_PROMPTS = 64  # each is one image per sampling: more would make sampling cost more than training


class PromptScoringConfig(Section):
    """Scorers for the validation prompts' images (each optional; a metric without its scorer is not logged)."""

    prompt_classifier: str | None = Field(None, description=(
        "Classifier folder (e.g. the demo's digits classifier): val_prompt_accuracy is the share of prompt images it "
        "reads as the one class name the prompt contains (every prompt must name exactly one of its classes)."))
    clip_model: str | None = Field(None, description="CLIP model folder or hub id: val_clip_score (torchmetrics CLIPScore).")


def read_validation_prompts(value: object) -> list[str]:
    """The prompts of `train.validation_prompts`: the list itself, or a text file's non-empty lines; ValueError names
    the field when the file cannot be read, or the list is empty or too long."""
    if isinstance(value, str):
        try:
            prompts = [line.strip() for line in Path(value).expanduser().read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"validation_prompts: the prompt file {value!r} cannot be read "
                             f"({type(error).__name__}); give a UTF-8 text file, one prompt per line, or a list") from None
        prompts = [prompt for prompt in prompts if prompt]
    elif isinstance(value, list) and all(isinstance(prompt, str) for prompt in value):
        prompts = [prompt.strip() for prompt in value]
    else:
        raise ValueError("validation_prompts: give a list of prompt strings or the path of a text file, one prompt per line")
    if not prompts or not all(prompts):
        raise ValueError("validation_prompts: no prompts (an empty list, file or prompt); give at least one prompt or "
                         "remove the field")
    if len(prompts) > MAX_VALIDATION_PROMPTS:
        raise ValueError(f"validation_prompts: {len(prompts)} prompts, at most {MAX_VALIDATION_PROMPTS} are sampled "
                         "during training; keep the few that show progress (score the rest after training)")
    return prompts


class TrainConfig(Section):
    max_epochs: int = Field(10, ge=1, le=MAX_COUNT)
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Stop after this many optimizer steps (overrides max_epochs for the schedule).")
    batch_size: int = Field(8, ge=1, le=MAX_BATCH, description="Micro-batch per process; effective batch = batch_size × gradient_accumulation × world size.")
    gradient_accumulation: int = Field(1, ge=1, le=MAX_COUNT)
    effective_batch_size: int | None = Field(
        None, ge=1, le=MAX_BATCH * MAX_COUNT, description="If set, gradient_accumulation is derived: effective / (batch_size × world size), which must divide exactly.")
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip_norm: float = Field(1.0, ge=0, le=1e6, description="Max gradient norm; 0 turns clipping off.")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    ema: EmaConfig | None = None
    speed: SpeedConfig = SpeedConfig()
    validation: ValidationConfig = ValidationConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    checkpoints: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    preemption: PreemptionConfig = PreemptionConfig()
    diffusion: DiffusionTrainingConfig = DiffusionTrainingConfig()
    validation_prompts: list[str] | None = Field(None, description=(
        "text_to_image: prompts drawn with fixed seeds at step 0 (the base model) and during training, as grids in "
        "TensorBoard and the evaluation report; a list, or a text file with one prompt per line (read at config load)."))
    validation_prompts_every: int | None = Field(None, ge=1, description=(
        "Draw the validation prompts every N optimizer steps; null: at every validation."))
    validation_prompt_scoring: PromptScoringConfig = PromptScoringConfig()
    loss: LossConfig = LossConfig()
    autoencoder: AutoencoderConfig | None = task_field(None, description="task autoencoder: model size, VAE, anomaly mode.",
                                                       elsewhere="applies to task autoencoder only, not {task}; remove it")
    semi_supervised: SemiSupervisedConfig | None = task_field(
        None, description="task semi_supervised: pseudo-labelling.",
        elsewhere="applies to task semi_supervised only, not {task}; remove it")
    num_workers: WorkerCount = Field(0, description="DataLoader workers; auto: from free CPUs and memory.")
    transforms: TransformsConfig = TransformsConfig()
    data_loading: DataLoadingConfig = DataLoadingConfig()
    deterministic: bool = Field(False, description="Deterministic algorithms (bitwise-reproducible on CPU; slower on GPU).")
    device: PlainText = "auto"
    distributed: DistributedConfig | None = Field(None, description="Train on several pods through a PyTorchJob/TrainJob (cluster runs only).")

    @field_validator("validation_prompts", mode="before")
    @classmethod
    def _read_prompts(cls, value):
        return None if value is None else read_validation_prompts(value)

    @model_validator(mode="after")
    def _plateau_schedule_needs_validation(self) -> "TrainConfig":
        if self.schedule.name == "one_cycle" and self.schedule.warmup_steps:
            raise ValueError("schedule.warmup_steps: one_cycle has its own warm-up (pct_start); leave warmup_steps at 0")
        if self.schedule.name in ("constant", "step", "reduce_on_plateau") and self.schedule.warmup_steps:
            raise ValueError(f"schedule.warmup_steps: schedule {self.schedule.name} has no warm-up; use "
                             "constant_with_warmup, linear, cosine, cosine_with_restarts or polynomial, or set it to 0")
        return self
