"""Training metrics in Prometheus' text format, served by every training process (train.logging.prometheus_port).

Each process serves its own `CollectorRegistry` (never the library's global one, so nothing
else that imports prometheus_client leaks in) on http://0.0.0.0:<port + local rank>/metrics:
the ranks of one pod need a port each. What each serves:

    every rank (label rank)   trainflow_train_samples_per_second  records this rank trained per second (sum() over
                                                                  ranks is the job's throughput)
                              trainflow_train_data_wait_ratio     share of the step spent waiting for data
                              trainflow_train_step                optimizer steps done
                              trainflow_train_gpu_memory_{allocated,peak,reserved}_bytes   on CUDA only: on a CPU
                                                                  there is no GPU memory, so they are absent
                              process_*                           the library's process collector (RSS, CPU seconds)
    rank 0 only               trainflow_train_loss                mean loss of the last step over every rank
                              trainflow_train_learning_rate, trainflow_train_epoch
                              trainflow_validation_value{metric}  the last validation's numbers (val_loss, ...)
                              trainflow_train_best_value{monitor}, trainflow_train_best_step
                              trainflow_train_early_stops_total{reason}   0 until early stopping fires (by reason)
                              trainflow_checkpoint_write_seconds  histogram of checkpoint write times

A port already in use is one warning line; training goes on without metrics.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

from trainflow.training.distributed import ProcessInfo
from trainflow.training.early_stopping import EarlyStopping

STOP_REASONS = ("patience", "plateau", "overfitting", "divergence", "target", "non_finite")
_CHECKPOINT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class TrainingMetrics:
    """The metrics one training process serves; every method is a no-op when serving is off."""

    def __init__(self, port: int | None, info: ProcessInfo, device: torch.device, monitor: str) -> None:
        self.info, self.device, self.monitor = info, device, monitor
        self._server: Any = None
        self._counted_stop = False
        if not port:
            return
        self.registry = CollectorRegistry()
        self._define(info)
        self.port = port + info.local_rank
        try:
            self._server, _ = start_http_server(self.port, addr="0.0.0.0", registry=self.registry)
        except OSError as exc:
            print(f"train: warning: cannot serve Prometheus metrics on port {self.port} ({exc.strerror or exc}); "
                  "training goes on without them (train.logging.prometheus_port)", file=sys.stderr, flush=True)

    def _define(self, info: ProcessInfo) -> None:
        registry, rank = self.registry, str(info.rank)
        ProcessCollector(registry=registry)

        def per_rank(name: str, doc: str) -> Any:
            return Gauge(name, doc, ["rank"], registry=registry).labels(rank)

        self.samples_per_second = per_rank("trainflow_train_samples_per_second", "Training records per second, this rank.")
        self.data_wait = per_rank("trainflow_train_data_wait_ratio", "Share of the last step spent waiting for data.")
        self.step_done = per_rank("trainflow_train_step", "Optimizer steps done.")
        if self.device.type == "cuda":
            self.gpu = {kind: per_rank(f"trainflow_train_gpu_memory_{kind}_bytes", f"GPU memory, {kind} (torch.cuda).")
                        for kind in ("allocated", "peak", "reserved")}
        if not info.is_main:
            return
        self.loss = Gauge("trainflow_train_loss", "Mean training loss of the last optimizer step (all ranks).", registry=registry)
        self.learning_rate = Gauge("trainflow_train_learning_rate", "Learning rate (first parameter group).", registry=registry)
        self.epoch = Gauge("trainflow_train_epoch", "Epochs done (fractional).", registry=registry)
        self.validation_value = Gauge("trainflow_validation_value", "Last validation's value of each metric.", ["metric"],
                                      registry=registry)
        self.best_value = Gauge("trainflow_train_best_value", "Best value of the monitored metric so far.", ["monitor"],
                                registry=registry).labels(self.monitor)
        self.best_step = Gauge("trainflow_train_best_step", "Step of the best value so far.", registry=registry)
        stops = Counter("trainflow_train_early_stops", "Early stopping events, by reason.", ["reason"], registry=registry)
        self.early_stops = {reason: stops.labels(reason) for reason in STOP_REASONS}  # each series exists from the start
        self.checkpoint_seconds = Histogram("trainflow_checkpoint_write_seconds", "Time to write one checkpoint.",
                                            buckets=_CHECKPOINT_BUCKETS, registry=registry)

    @property
    def serving(self) -> bool:
        return self._server is not None

    def step(self, step: int, epoch: float, record: dict[str, float], stopper: EarlyStopping) -> None:
        """After an optimizer step: the step log's record (loss, lr, samples/s over the world, data wait)."""
        if not self.serving:
            return
        self.step_done.set(step)
        if "samples_per_second" in record:
            self.samples_per_second.set(record["samples_per_second"] / self.info.world_size)
        if "data_wait_share" in record:
            self.data_wait.set(record["data_wait_share"])
        if self.device.type == "cuda":
            self.gpu["allocated"].set(torch.cuda.memory_allocated(self.device))
            self.gpu["peak"].set(torch.cuda.max_memory_allocated(self.device))
            self.gpu["reserved"].set(torch.cuda.memory_reserved(self.device))
        if self.info.is_main:
            self.loss.set(record["loss"])
            if "lr" in record:
                self.learning_rate.set(record["lr"])
            self.epoch.set(epoch)
            self.stopped(stopper)

    def validation(self, metrics: dict[str, float], stopper: EarlyStopping) -> None:
        if not (self.serving and self.info.is_main):
            return
        for name, value in metrics.items():
            self.validation_value.labels(name).set(value)
        if stopper.best_value is not None:
            self.best_value.set(stopper.best_value)
            self.best_step.set(stopper.best_step)
        self.stopped(stopper)

    def stopped(self, stopper: EarlyStopping) -> None:
        """Count an early stop once, by its reason (called after steps and validations, when it may have fired)."""
        if self.serving and self.info.is_main and stopper.stop_kind is not None and not self._counted_stop:
            self._counted_stop = True
            self.early_stops[stopper.stop_kind].inc()

    def checkpoint_written(self, seconds: float) -> None:
        if self.serving and self.info.is_main:
            self.checkpoint_seconds.observe(seconds)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
