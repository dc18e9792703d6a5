"""Stop training when the validation loss stops improving, and remember the best epoch."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class EarlyStopping:
    """Track a lower-is-better validation metric across epochs.

    `update` returns True when this epoch is the new best (save it). After
    `patience` epochs without an improvement larger than `min_delta`,
    `should_stop` turns True and `stop_reason` says why.
    """

    patience: int
    min_delta: float = 0.0
    best_value: float = math.inf
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    stop_reason: str | None = None

    def update(self, epoch: int, value: float) -> bool:
        if not math.isfinite(value):
            raise ValueError(f"validation loss is {value} at epoch {epoch}")
        if value < self.best_value - self.min_delta:
            self.best_value, self.best_epoch = value, epoch
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement >= self.patience:
            self.stop_reason = (
                f"early stopping: validation loss did not improve by more than {self.min_delta:g} "
                f"for {self.patience} epochs (best {self.best_value:.5f} at epoch {self.best_epoch})"
            )
        return False

    @property
    def should_stop(self) -> bool:
        return self.stop_reason is not None
