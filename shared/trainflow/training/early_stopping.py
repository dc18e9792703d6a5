"""When to stop: patience, plateau, overfitting, divergence, a target reached, a non-finite loss, or pruned.

Works on any logged metric in min or max mode. `update` is called at each
validation with the monitored value (and the mean training loss since the last
validation, for the overfitting rule); it returns whether this is the new best.
The state is plain JSON, saved in every checkpoint, so a resumed run stops
exactly where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from trainflow.config import EarlyStoppingConfig


@dataclasses.dataclass
class EarlyStopping:
    cfg: EarlyStoppingConfig
    lower_is_better: bool
    best_value: float | None = None
    best_step: int | None = None
    patience_reference: float | None = None
    validations_without_improvement: int = 0
    history: list[tuple[float, float | None]] = dataclasses.field(default_factory=list)  # (monitored, train_loss)
    stop_reason: str | None = None
    stop_kind: str | None = None

    # ------------------------------------------------------------- rules
    def _better(self, value: float, than: float, margin: float = 0.0) -> bool:
        return value < than - margin if self.lower_is_better else value > than + margin

    def update(self, step: int, value: float, train_loss: float | None = None) -> bool:
        """Record one validation; True when `value` is the best so far (strictly)."""
        name = self.cfg.monitor
        if not math.isfinite(value):
            self._stop("non_finite", f"{name} became {value} at step {step}")
            return False
        improved = self.best_value is None or self._better(value, self.best_value)
        if improved:
            self.best_value, self.best_step = value, step
        if self.patience_reference is None or self._better(value, self.patience_reference, self.cfg.min_delta):
            self.patience_reference = value
            self.validations_without_improvement = 0
        else:
            self.validations_without_improvement += 1
        self.history.append((value, train_loss))
        self._check_rules(step, value)
        return improved

    def _check_rules(self, step: int, value: float) -> None:
        cfg, name = self.cfg, self.cfg.monitor
        best = f"best {self.best_value:.6g} at step {self.best_step}"
        if cfg.target is not None and not self._better(cfg.target, value):
            self._stop("target", f"{name} reached the target {cfg.target:g} ({value:.6g}) at step {step}")
        elif cfg.divergence_factor is not None and self._diverged(value):
            self._stop("divergence", f"{name} = {value:.6g} diverged beyond {cfg.divergence_factor:g}x the {best}")
        elif cfg.overfitting is not None and self._overfitting(cfg.overfitting.window):
            self._stop("overfitting", f"{name} worsened over the last {cfg.overfitting.window} validations while the "
                                      f"training loss kept falling ({best})")
        elif cfg.plateau is not None and self._plateaued(cfg.plateau.window, cfg.plateau.threshold):
            self._stop("plateau", f"{name} changed by less than {cfg.plateau.threshold:g} (relative) over the last "
                                  f"{cfg.plateau.window} validations ({best})")
        elif cfg.patience is not None and self.validations_without_improvement >= cfg.patience:
            self._stop("patience", f"{name} did not improve by more than {cfg.min_delta:g} for {cfg.patience} "
                                   f"validations ({best})")

    def _diverged(self, value: float) -> bool:
        assert self.best_value is not None and self.cfg.divergence_factor is not None
        factor = self.cfg.divergence_factor
        if self.lower_is_better:
            return value > factor * abs(self.best_value) if self.best_value >= 0 else value > self.best_value / factor
        return value < self.best_value / factor if self.best_value > 0 else value < self.best_value * factor

    def _overfitting(self, window: int) -> bool:
        recent = self.history[-(window + 1):]
        if len(recent) <= window or any(train is None for _, train in recent):
            return False
        pairs = list(zip(recent, recent[1:]))
        val_worse = all(self._better(before[0], after[0]) for before, after in pairs)
        train_better = all(after[1] < before[1] for before, after in pairs)  # training loss: lower is better
        return val_worse and train_better

    def _plateaued(self, window: int, threshold: float) -> bool:
        recent = [value for value, _ in self.history[-window:]]
        if len(recent) < window:
            return False
        scale = max(abs(recent[0]), 1e-12)
        return (max(recent) - min(recent)) / scale < threshold

    def _stop(self, kind: str, reason: str) -> None:
        self.stop_kind, self.stop_reason = kind, f"early stopping ({kind}): {reason}"

    def stop_for_non_finite_loss(self, step: int, loss: float) -> None:
        self._stop("non_finite", f"training loss became {loss} at step {step}; the last good checkpoint is kept untouched")

    def stop_pruned(self, reason: str) -> None:
        """Stop for a reason from outside the rules (a tuning trial's pruner, via the engine's validation hook)."""
        self._stop("pruned", reason)

    @property
    def should_stop(self) -> bool:
        return self.stop_reason is not None

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value, "best_step": self.best_step, "patience_reference": self.patience_reference,
            "validations_without_improvement": self.validations_without_improvement,
            "history": [list(item) for item in self.history], "stop_reason": self.stop_reason, "stop_kind": self.stop_kind,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.patience_reference = state["patience_reference"]
        self.validations_without_improvement = state["validations_without_improvement"]
        self.history = [(value, train) for value, train in state["history"]]
        self.stop_reason, self.stop_kind = state["stop_reason"], state["stop_kind"]
