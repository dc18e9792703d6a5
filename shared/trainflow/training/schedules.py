"""Learning-rate schedules from the libraries, counted in optimizer steps.

The warm-up/decay family comes from transformers' `get_scheduler` (the same
functions diffusers re-exports); one-cycle, step and reduce-on-plateau from
torch. `total_steps` is the number of optimizer steps of the whole run, so
gradient accumulation and the world size neither stretch nor shrink the shape.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR, ReduceLROnPlateau, StepLR
from transformers import get_scheduler

from trainflow.config import ScheduleConfig

Schedule = LRScheduler | ReduceLROnPlateau


def build_schedule(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int, lower_is_better: bool) -> Schedule:
    if cfg.name == "one_cycle":
        return OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(total_steps, 2),
                          pct_start=cfg.pct_start)
    if cfg.name == "step":
        return StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "reduce_on_plateau":
        return ReduceLROnPlateau(optimizer, mode="min" if lower_is_better else "max", factor=cfg.gamma,
                                 patience=cfg.plateau_patience)
    specific = {}
    if cfg.name == "cosine_with_restarts":
        specific = {"num_cycles": int(cfg.num_cycles)}
    elif cfg.name == "cosine":
        specific = {"num_cycles": 0.5 * cfg.num_cycles}
    elif cfg.name == "polynomial":
        specific = {"power": cfg.power, "lr_end": cfg.lr_end}
    return get_scheduler(cfg.name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps,
                         scheduler_specific_kwargs=specific)


def steps_on_validation(schedule: Schedule) -> bool:
    """reduce_on_plateau steps with the monitored metric at each validation; the rest step every optimizer step."""
    return isinstance(schedule, ReduceLROnPlateau)


def current_learning_rate(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
