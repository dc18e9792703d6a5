"""`train.ema`: an exponential moving average of the trained weights, updated every N steps, optionally on the CPU.

Built on diffusers' `training_utils.EMAModel` rather than `torch.optim.swa_utils.AveragedModel`: it averages
the trainable parameters only (the adapter under LoRA, not a copy of the frozen model), swaps the average in
and out for validation (`store` / `copy_to` / `restore`), and its state (step count, decay) is plain values
that go into the checkpoint's state.json beside the shadow weights' safetensors, so resume is exact.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from trainflow.config.training import EmaConfig


class WeightAverage:
    def __init__(self, cfg: EmaConfig, params: list[torch.nn.Parameter], device: torch.device) -> None:
        from diffusers.training_utils import EMAModel

        self.cfg, self.params, self.device = cfg, params, device
        # on_cpu: the average lives in CPU memory and visits the GPU for each update (diffusers' offload_ema).
        self.home = torch.device("cpu") if cfg.on_cpu else device
        self.average = EMAModel(params, decay=cfg.decay, use_ema_warmup=False)
        self.average.to(self.home)

    def after_optimizer_step(self, step: int) -> None:
        """Update on every `update_every`-th optimizer step (`step` counts from 1)."""
        if step % self.cfg.update_every:
            return
        if self.home != self.device:
            self.average.to(self.device, non_blocking=True)
        self.average.step(self.params)
        if self.home != self.device:
            self.average.to(self.home, non_blocking=True)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the average inside the block and its trained weights again after it."""
        self.average.store(self.params)
        self.average.copy_to(self.params)
        try:
            yield
        finally:
            self.average.restore(self.params)

    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(the shadow weights by position, for ema.safetensors; the rest of the state, for state.json)."""
        state = self.average.state_dict()
        return {str(i): p for i, p in enumerate(state.pop("shadow_params"))}, state

    def load(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        shadow = [tensors[str(i)] for i in range(len(tensors))]
        self.average.load_state_dict({**state, "shadow_params": shadow})
        self.average.to(self.home)
