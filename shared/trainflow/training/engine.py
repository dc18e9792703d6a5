"""The training engine: one loop for every task, read top to bottom.

    setup -> resume (or start fresh) -> epochs of optimizer steps
          -> validation (every N steps and/or each epoch) -> early stopping -> checkpoints
          -> export of the best checkpoint

The engine owns devices, mixed precision (through accelerate), gradient
accumulation, clipping, optimizers and schedules, EMA, out-of-memory retries,
early stopping, checkpoints, exact resume, DDP and logging. The task (see
`trainflow.training.task`) owns the model, the data, the loss and the metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm import tqdm

from trainflow.config import TrainConfig
from trainflow.devices import pick_device, resolve_mixed_precision
from trainflow.errors import ConfigError, UserFacingError
from trainflow.metrics.metric_directions import is_lower_better
from trainflow.training import distributed as dist_env
from trainflow.training.batch_plan import EpochPlan, validation_loader
from trainflow.training.checkpoints import (CheckpointStore, LoadedCheckpoint, check_optimizer_fits, check_tensors_fit,
                                            optimizer_state_from_tensors, optimizer_state_to_tensors)
from trainflow.training.early_stopping import EarlyStopping
from trainflow.training.ema import WeightAverage
from trainflow.training.optimizers import build_optimizer, parameter_groups
from trainflow.training.preemption import PreemptionWatch, TrainingPreempted
from trainflow.training.prometheus_metrics import TrainingMetrics
from trainflow.training.prompt_samples import PromptSampleLog
from trainflow.training.rng_state import capture_rng_state, restore_rng_state
from trainflow.training.run_identity import RunIdentity, load_trainable_state, trainable_state
from trainflow.training.schedules import build_schedule, current_learning_rate, steps_on_validation
from trainflow.training.speed_options import apply_backend_options, optimizer_options, prepare_model
from trainflow.training.task import Task, move_to_device
from trainflow.training.training_log import TrainingLog, memory_in_use_mb


@dataclasses.dataclass
class TrainingOutcome:
    monitor: str
    best_value: float | None
    best_step: int | None
    best_epoch: float | None
    stop_reason: str
    stop_kind: str
    steps_run: int
    epochs_run: float
    history: list[dict[str, float]]
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    mixed_precision: str
    device: str
    world_size: int
    micro_batch: int
    gradient_accumulation: int
    effective_batch: int
    resumed_from: str | None


# Called after each finite validation with (step, epoch, metrics) on every rank (the metrics are the same on all);
# a non-empty return is the reason to stop now (a tuning trial's pruner): stop kind `pruned`, checkpoint as usual.
ValidationHook = Callable[[int, float, dict[str, float]], "str | None"]


class _RetryWithSmallerBatch(Exception):
    """Raised inside a step after an out-of-memory error once the micro-batch has been halved."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, task: Task, cfg: TrainConfig, checkpoint_dir: Path, seed: int, identity: RunIdentity,
                 tensorboard_dir: Path | None = None, info: dist_env.ProcessInfo | None = None,
                 validation_hook: ValidationHook | None = None) -> None:
        self.task, self.cfg, self.seed, self.identity = task, cfg, seed, identity
        self.validation_hook = validation_hook
        self.checkpoint_dir = Path(checkpoint_dir)
        self.tensorboard_dir = tensorboard_dir
        self.info = info or dist_env.process_info_from_env()

    # ================================================================ setup
    def setup(self) -> None:
        cfg, info = self.cfg, self.info
        device = pick_device(cfg.device)
        if device.type == "cuda" and info.distributed:
            device = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(device)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        # Batch and split errors come before joining the process group: a rendezvous waits for every rank.
        self.micro_batch, self.accumulation = self._resolve_accumulation()
        self.plan = EpochPlan(self.task.train_dataset(), info, self.seed, self.micro_batch * self.accumulation, cfg.data_loading)
        self.val_set = self.task.val_dataset()
        self.steps_per_epoch = self.plan.steps_per_epoch()
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size: one optimizer step needs batch_size × gradient_accumulation × world size = "
                f"{self.micro_batch * self.accumulation * info.world_size} training records, but the train split has "
                f"{len(self.plan.dataset)}; lower train.batch_size or train.gradient_accumulation"
            )
        if len(self.val_set) == 0:
            raise UserFacingError("the val split is empty; ingest more records or change ingest.split")
        dist_env.init_process_group(info, device)
        self.mixed_precision = resolve_mixed_precision(cfg.mixed_precision, device)
        self.accelerator = Accelerator(
            mixed_precision=self.mixed_precision, cpu=device.type == "cpu",
            # No collectives in forward: a rank that hits out-of-memory must not strand the others.
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
        self.device = self.accelerator.device
        monitor = cfg.early_stopping.monitor
        mode = cfg.early_stopping.mode
        self.lower_is_better = (mode == "min") if mode else is_lower_better(monitor)

        apply_backend_options(cfg.speed, self.device, self._say)
        seed_everything(self.seed)  # model initialisation is the same in every process and every resume
        model = self.task.build_model()
        # A task may name the modules worth compiling (text_to_image: the UNet); default the whole model.
        targets = getattr(self.task, "compile_targets", lambda m: [m])(model)
        model = prepare_model(model, targets, cfg.speed, self.device, self._say)
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.max_epochs
        optimizer = build_optimizer(parameter_groups(model, cfg.optimizer, self.task.learning_rates()), cfg.optimizer,
                                    **optimizer_options(cfg.speed, cfg.optimizer, self.device, self._say))
        self.schedule = build_schedule(optimizer, cfg.schedule, self.total_steps, self.lower_is_better)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.trainable = [p for p in self.accelerator.unwrap_model(self.model).parameters() if p.requires_grad]
        self.ema = WeightAverage(cfg.ema, self.trainable, self.device) if cfg.ema is not None else None
        self.stopper = EarlyStopping(cfg.early_stopping, self.lower_is_better)
        self.store = CheckpointStore(self.checkpoint_dir, self.lower_is_better, cfg.checkpoints.keep_top_k,
                                     cfg.checkpoints.total_limit)
        self.log = TrainingLog(cfg.logging, self.checkpoint_dir, self.tensorboard_dir, enabled=info.is_main)
        self.preemption = PreemptionWatch(cfg.preemption, info)
        self.checkpoint_seconds, self.checkpointed_step = 0.0, -1  # the last write's time; its step
        self.step, self.epoch, self.position = 0, 0, 0
        self.history: list[dict[str, float]] = []
        self.loss_since_validation = [0.0, 0]
        self.resumed_from: str | None = None
        self.metrics = TrainingMetrics(cfg.logging.prometheus_port, info, self.device, monitor)
        self.prompt_log = PromptSampleLog(self.task, cfg.validation_prompts_every, info)

    def _resolve_accumulation(self) -> tuple[int, int]:
        cfg, world = self.cfg, self.info.world_size
        if cfg.effective_batch_size is None:
            return cfg.batch_size, cfg.gradient_accumulation
        per_step = cfg.batch_size * world
        if cfg.effective_batch_size % per_step:
            raise ConfigError(
                f"train.effective_batch_size: {cfg.effective_batch_size} is not a multiple of batch_size × world size "
                f"= {cfg.batch_size} × {world}; pick a multiple so gradient accumulation is a whole number"
            )
        return cfg.batch_size, cfg.effective_batch_size // per_step

    # ================================================================ the loop
    def fit(self) -> TrainingOutcome:
        self.setup()
        if not self._resume():
            self.log.reset()
            seed_everything(self.seed + 7919 * (self.info.rank + 1))  # a different random stream per rank
            self._say(f"train: {self.total_steps} optimizer steps ({self.steps_per_epoch} per epoch); effective batch "
                      f"{self._effective_batch()} = micro-batch {self.micro_batch} × accumulation {self.accumulation} "
                      f"× world size {self.info.world_size}; precision {self.mixed_precision} on {self.device}")
            if self.prompt_log.enabled:  # the weights training starts from, for comparison
                self.log.validation(0, self._draw_prompts())
        try:
            with self.preemption:  # SIGTERM: stop at the next step boundary (trainflow.training.preemption)
                while not self._finished() and not self.preemption.stop_agreed:
                    self._run_epoch()
                if self.preemption.stop_agreed:
                    self._stop_for_preemption()
        finally:
            self.log.close()
        dist_env.barrier(self.info)
        return self._outcome()

    def _run_epoch(self) -> None:
        records_per_step = self.micro_batch * self.accumulation
        progress = tqdm(total=self.steps_per_epoch, initial=self.position // records_per_step, unit="step", leave=False,
                        desc=f"train: epoch {self.epoch + 1}/{self._epochs_planned()}", mininterval=2.0,
                        disable=None if self.info.is_main else True)
        start_epoch = self.epoch
        while self.epoch == start_epoch and not self._finished() and not self.preemption.stop_agreed:
            loader = self.plan.loader(self.epoch, self.position, self.micro_batch, self.cfg.num_workers,
                                      pin_memory=self.device.type == "cuda")
            batches = iter(loader)
            try:
                while self.epoch == start_epoch and not self._finished() and not self.preemption.stop_agreed:
                    micro_batches = list(itertools.islice(batches, self.accumulation))
                    if not micro_batches:
                        break
                    record = self._optimizer_step(micro_batches)
                    record.update(loader.step_fields())  # data-wait share, batches/s, memory (data.loader_monitor)
                    self._after_step(record)
                    progress.update(1)
                    progress.set_postfix(loss=f"{record['loss']:.4f}")
            except _RetryWithSmallerBatch:
                continue  # rebuild the loader from the failed step's first record with the smaller micro-batch
        progress.close()

    def _optimizer_step(self, micro_batches: list[Any]) -> dict[str, float]:
        """Forward/backward over the micro-batches, then one optimizer step. Out of memory: halve and retry."""
        started = time.perf_counter()
        rng_before = capture_rng_state()
        count = len(micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        try:
            for index, batch in enumerate(micro_batches):
                last = index == count - 1
                if last and self.info.distributed and self._any_rank_out_of_memory(False):
                    raise _RetryWithSmallerBatch  # another rank ran out of memory; all retry together
                sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
                with sync:
                    batch = move_to_device(batch, self.device, non_blocking=True)
                    with self.accelerator.autocast():
                        loss = self.task.training_step(self.model, batch)
                    self.accelerator.backward(loss / count)
                loss_sum += loss.detach().float()
        except torch.OutOfMemoryError:
            if self.info.distributed and index == count - 1:
                raise UserFacingError(
                    f"CUDA out of memory on rank {self.info.rank} in the gradient-synchronising micro-batch; lower "
                    "train.batch_size (effective batch is kept by raising train.gradient_accumulation)") from None
            if self.info.distributed:
                self._any_rank_out_of_memory(True)
            self._shrink_micro_batch(rng_before)
        except _RetryWithSmallerBatch:
            self._shrink_micro_batch(rng_before)
        mean_loss = self.preemption.mean_loss(loss_sum / count)  # over ranks; also agrees on a SIGTERM stop
        loss_value = float(mean_loss.item())
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)  # the weights stay those of the last good step
            return {"loss": loss_value, "non_finite": True}
        grad_norm = None
        if self.cfg.grad_clip_norm > 0:
            grad_norm = self.accelerator.clip_grad_norm_(self.trainable, self.cfg.grad_clip_norm)
        elif (self.step + 1) % self.cfg.logging.every_n_steps == 0:
            # Without clipping, the norm is only for the log: measure it on logging steps alone
            # (a norm over every tensor each step costs a few percent of a small model's step).
            self.accelerator.unscale_gradients()
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.trainable if p.grad is not None])
        self.optimizer.step()
        if not self.accelerator.optimizer_step_was_skipped and not steps_on_validation(self.schedule):
            self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.after_optimizer_step(self.step + 1)
        seconds = time.perf_counter() - started
        record = {"grad_norm": float(grad_norm)} if grad_norm is not None else {}
        return {"loss": loss_value, **record, "lr": current_learning_rate(self.optimizer),
                "samples_per_second": self._effective_batch() / max(seconds, 1e-9),
                "memory_mb": memory_in_use_mb(self.device)}

    def _any_rank_out_of_memory(self, here: bool) -> bool:
        flag = torch.tensor([1.0 if here else 0.0], device=self.device)
        return bool(dist_env.all_reduce_sum(flag, self.info).item() > 0)

    def _shrink_micro_batch(self, rng_before: bytes) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        per_step = self.micro_batch * self.accumulation
        smaller = [size for size in range(self.micro_batch // 2, 0, -1) if per_step % size == 0]
        if not smaller:
            raise UserFacingError(
                "CUDA out of memory with a micro-batch of 1; the model does not fit on this GPU: use a GPU with more "
                "memory, train.mixed_precision bf16/fp16, train.diffusion.gradient_checkpointing or LoRA")
        old = self.micro_batch
        self.micro_batch, self.accumulation = smaller[0], per_step // smaller[0]
        restore_rng_state(rng_before)  # the retried step draws the same random numbers
        self._say(f"train: out of memory at step {self.step + 1}: micro-batch {old} -> {self.micro_batch}, "
                  f"accumulation -> {self.accumulation} (effective batch unchanged at {self._effective_batch()}); retrying")
        raise _RetryWithSmallerBatch

    def _after_step(self, record: dict[str, float]) -> None:
        if record.get("non_finite"):
            self.stopper.stop_for_non_finite_loss(self.step + 1, record["loss"])
            self.metrics.stopped(self.stopper)
            self._say(f"train: {self.stopper.stop_reason}")
            return
        self.step += 1
        self.position += self.micro_batch * self.accumulation
        epoch_end = self.position >= self.steps_per_epoch * self.micro_batch * self.accumulation
        if epoch_end:
            self.epoch, self.position = self.epoch + 1, 0
        self.loss_since_validation = [self.loss_since_validation[0] + record["loss"], self.loss_since_validation[1] + 1]
        epoch = self.epoch + self.position / max(self._records_per_epoch(), 1)
        self.log.step({"step": self.step, "epoch": epoch, **record})
        self.metrics.step(self.step, epoch, record, self.stopper)
        every = self.cfg.validation.every_n_steps
        validate = bool(every and self.step % every == 0) or (epoch_end and self.cfg.validation.every_epoch)
        prompt_metrics = self._draw_prompts() if self.prompt_log.due(self.step, validate) else {}
        if prompt_metrics and not validate:
            self.log.validation(self.step, prompt_metrics)
        metrics = self._validate(prompt_metrics) if validate else None
        if self.stopper.stop_kind == "non_finite":
            return  # weights that validate to NaN/inf are not saved: as newest, they would prune the last good checkpoint
        every_ckpt = self.cfg.checkpoints.every_n_steps
        if validate or epoch_end or (every_ckpt and self.step % every_ckpt == 0) or self._finished():
            self._save_checkpoint(metrics)

    # ================================================================ validation
    @contextlib.contextmanager
    def _evaluation_weights(self):
        """The unwrapped model in eval mode, holding the weights to judge (the EMA average when EMA is on)."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        with self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext():
            yield model
        model.train(was_training)

    @torch.no_grad()
    def _validate(self, prompt_metrics: dict[str, float] | None = None) -> dict[str, float] | None:
        totals: dict[str, torch.Tensor] = {}
        loader = validation_loader(self.val_set, self.info, self.cfg.batch_size, self.cfg.num_workers,
                                   pin_memory=self.device.type == "cuda")
        with self._evaluation_weights() as model:
            with self.accelerator.autocast():
                for batch in loader:
                    for name, value in self.task.validation_step(model, move_to_device(batch, self.device)).items():
                        value = value.detach().double()
                        totals[name] = totals[name] + value if name in totals else value
            totals = {name: dist_env.all_reduce_sum(value, self.info).cpu() for name, value in sorted(totals.items())}
            self._log_sample_images(model)  # from the weights just validated (EMA's when on)
        metrics = {f"val_{name}": float(value) for name, value in self.task.finalize_validation(totals).items()}
        metrics.update(prompt_metrics or {})  # drawn at this step (train.validation_prompts)
        loss_sum, count = self.loss_since_validation
        metrics["train_loss"] = loss_sum / max(count, 1)
        self.loss_since_validation = [0.0, 0]
        value = metrics.get(self.cfg.early_stopping.monitor)
        if value is None:
            raise ConfigError(f"train.early_stopping.monitor: validation logged {', '.join(sorted(metrics))}, "
                              f"not {self.cfg.early_stopping.monitor!r}")
        improved = self.stopper.update(self.step, value, metrics["train_loss"])
        if steps_on_validation(self.schedule) and math.isfinite(value):
            self.schedule.step(value)
        epoch = self.epoch + self.position / max(self._records_per_epoch(), 1)
        if self.validation_hook is not None and not self.stopper.should_stop:
            if reason := self.validation_hook(self.step, round(epoch, 4), metrics):
                self.stopper.stop_pruned(reason)
        self.history.append({"step": self.step, "epoch": round(epoch, 4), **metrics, "lr": current_learning_rate(self.optimizer)})
        self.log.validation(self.step, metrics)
        self.metrics.validation(metrics, self.stopper)
        shown = "  ".join(f"{k} {v:.5g}" for k, v in metrics.items())
        self._say(f"train: step {self.step} (epoch {epoch:.2f}/{self._epochs_planned()})  {shown}"
                  f"  lr {current_learning_rate(self.optimizer):.2e}{'  * best' if improved else ''}")
        return metrics if math.isfinite(value) else None

    def _log_sample_images(self, model: torch.nn.Module) -> None:
        """Log the images of a task's optional `validation_images(model, count) -> (N, 3, H, W) in [0, 1] | None`."""
        make_images = getattr(self.task, "validation_images", None)
        count = self.cfg.logging.sample_images
        wanted = self.info.is_main and self.cfg.logging.tensorboard and self.tensorboard_dir is not None
        if make_images is None or not count or not wanted:
            return
        # A forked generator: sampling (or a lazy model load) must not move the training stream, or resume is not exact.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), self.accelerator.autocast():
            images = make_images(model, count)
        if images is not None:
            self.log.images("val/samples", images, self.step)

    @torch.no_grad()
    def _draw_prompts(self) -> dict[str, float]:
        """The task's prompt samples from the current weights (EMA's when on): grid to TensorBoard, val_* metrics back."""
        # A forked generator: sampling must not move the training stream, or resume is not exact.
        with self._evaluation_weights() as model, self.accelerator.autocast(), \
                torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            samples = self.prompt_log.draw(model)
        metrics, grid = self.prompt_log.take(samples, self.step, self.device)
        if grid is not None:
            self.log.image_grid("validation_prompts", grid, self.step)
        return metrics

    # ================================================================ checkpoints
    def _save_checkpoint(self, metrics: dict[str, float] | None) -> None:
        started = time.perf_counter()
        self.checkpointed_step = self.step
        rng = dist_env.all_gather_bytes(capture_rng_state(), self.info, torch.device("cpu") if self.device.type == "cpu" else self.device)
        if not self.info.is_main:
            return
        model = self.accelerator.unwrap_model(self.model)
        optimizer_tensors, optimizer_meta = optimizer_state_to_tensors(self.optimizer.state_dict())
        tensors = {"model": trainable_state(model), "optimizer": optimizer_tensors,
                   "rng": {f"rank{r}": torch.frombuffer(bytearray(b), dtype=torch.uint8) for r, b in enumerate(rng)},
                   **self.prompt_log.checkpoint_tensors()}
        ema_meta = None
        if self.ema is not None:
            tensors["ema"], ema_meta = self.ema.checkpoint()
        scaler = self.accelerator.scaler
        state = {
            "identity": self.identity.to_json(), "epoch": self.epoch, "position": self.position,
            "micro_batch": self.micro_batch, "accumulation": self.accumulation, "world_size": self.info.world_size,
            "optimizer": optimizer_meta, "schedule": self.schedule.state_dict(), "ema": ema_meta,
            "scaler": scaler.state_dict() if scaler is not None else None, "early_stopping": self.stopper.state_dict(),
            "history": self.history, "loss_since_validation": self.loss_since_validation, "finished": self._finished(),
            "prompt_samples": self.prompt_log.state_dict(),
        }
        metric = metrics.get(self.cfg.early_stopping.monitor) if metrics else None
        self.store.save(self.step, tensors, state, metric)
        self.checkpoint_seconds = time.perf_counter() - started
        self.metrics.checkpoint_written(self.checkpoint_seconds)

    def _stop_for_preemption(self) -> None:
        """After SIGTERM: a checkpoint of the step just done if the grace budget allows, then exit 143 (retriable)."""
        written = self.checkpointed_step == self.step
        if not written and self.stopper.stop_kind != "non_finite" and \
                self.preemption.checkpoint_fits(self.checkpoint_seconds, self.device):
            self._save_checkpoint(None)
            written = True
        self._say(self.preemption.stop_line(self.step, written, self.checkpoint_seconds))
        raise TrainingPreempted(self.step)

    def _resume(self) -> bool:
        checkpoint = self.store.resume_newest(self._restore, warn=self._warn)
        if checkpoint is None:
            return False
        self.resumed_from = checkpoint.path.name
        where = f"epoch {self.epoch + 1}, {self.position} records in" if self.position else f"start of epoch {self.epoch + 1}"
        self._say(f"train: resuming from checkpoint {checkpoint.path.name} (step {self.step}, {where})"
                  + (" — training had already finished" if checkpoint.state["finished"] else ""))
        return True

    def _restore(self, checkpoint: LoadedCheckpoint) -> None:
        """Put a verified checkpoint's state into this run. Raises UserFacingError for another run's checkpoints;
        anything else (a tensor that does not fit, a missing key) makes the store try the previous checkpoint."""
        state = checkpoint.state
        differences = self.identity.differences(state["identity"])
        if state["world_size"] != self.info.world_size:
            differences.append(f"world size is {state['world_size']} in the checkpoint, {self.info.world_size} now")
        if differences:
            raise UserFacingError(
                f"the checkpoints in {self.checkpoint_dir} belong to a different run: {'; '.join(differences)}. "
                f"To start fresh, delete {self.checkpoint_dir} (or use `trainflow run --fresh` / another --state-dir)")
        model = self.accelerator.unwrap_model(self.model)
        check_tensors_fit(checkpoint.tensors["model"], trainable_state(model), "model.safetensors")
        check_optimizer_fits(checkpoint.tensors["optimizer"], state["optimizer"], self.optimizer)
        if self.ema is not None:
            check_tensors_fit(checkpoint.tensors["ema"], {str(i): p for i, p in enumerate(self.trainable)}, "ema.safetensors")
        load_trainable_state(model, checkpoint.tensors["model"])
        self.optimizer.load_state_dict(optimizer_state_from_tensors(checkpoint.tensors["optimizer"], state["optimizer"]))
        self.schedule.load_state_dict(state["schedule"])
        if self.ema is not None:
            self.ema.load(checkpoint.tensors["ema"], state["ema"])
        if state["scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.stopper.load_state_dict(state["early_stopping"])
        restore_rng_state(bytes(checkpoint.tensors["rng"][f"rank{self.info.rank}"].numpy().tobytes()))
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.micro_batch, self.accumulation = state["micro_batch"], state["accumulation"]
        self.history, self.loss_since_validation = state["history"], state["loss_since_validation"]
        self.prompt_log.load_state_dict(state.get("prompt_samples"), checkpoint.tensors)
        self.log.truncate_after(self.step)

    def load_best_into_model(self) -> torch.nn.Module:
        """The unwrapped model holding the best checkpoint's weights (EMA weights when EMA is on)."""
        best = self.store.load_best()
        model = self.accelerator.unwrap_model(self.model)
        load_trainable_state(model, best.tensors["model"])
        if self.ema is not None and "ema" in best.tensors:
            shadow = [best.tensors["ema"][str(i)].to(p.device) for i, p in enumerate(self.trainable)]
            for param, value in zip(self.trainable, shadow):
                param.data.copy_(value)
        return model

    def export_best(self, folder: Path) -> None:
        if self.info.is_main:
            self.task.export(self.load_best_into_model(), folder)

    # ================================================================ bookkeeping
    def _finished(self) -> bool:
        return self.stopper.should_stop or self.step >= self.total_steps

    def _effective_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.info.world_size

    def _records_per_epoch(self) -> int:
        return self.steps_per_epoch * self.micro_batch * self.accumulation

    def _epochs_planned(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def _say(self, line: str) -> None:
        if self.info.is_main:
            print(line, flush=True)

    def _warn(self, line: str) -> None:
        if self.info.is_main:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop serving metrics (they stay up after fit() so a scrape sees how training ended)."""
        if hasattr(self, "metrics"):  # setup() may have failed before starting them
            self.metrics.close()

    def _outcome(self) -> TrainingOutcome:
        best = self.store.best()
        newest = self.store.records()
        if self.stopper.should_stop:
            reason, kind = self.stopper.stop_reason or "", self.stopper.stop_kind or ""
        elif self.cfg.max_steps and self.step >= self.cfg.max_steps:
            reason, kind = f"reached train.max_steps ({self.cfg.max_steps})", "max_steps"
        else:
            reason, kind = f"reached train.max_epochs ({self.cfg.max_epochs})", "max_epochs"
        best_record = next((h for h in self.history if best is not None and h["step"] == best.step), None)
        return TrainingOutcome(
            monitor=self.cfg.early_stopping.monitor, best_value=best.metric if best else None,
            best_step=best.step if best else None, best_epoch=best_record["epoch"] if best_record else None,
            stop_reason=reason, stop_kind=kind, steps_run=self.step,
            epochs_run=round(self.step / self.steps_per_epoch, 4), history=self.history,
            best_checkpoint=best.path if best else None, last_checkpoint=newest[-1].path if newest else None,
            mixed_precision=self.mixed_precision, device=str(self.device), world_size=self.info.world_size,
            micro_batch=self.micro_batch, gradient_accumulation=self.accumulation, effective_batch=self._effective_batch(),
            resumed_from=self.resumed_from,
        )
