"""Pick the compute device and the mixed-precision mode it supports."""

from __future__ import annotations

import torch

from trainflow.errors import ConfigError


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{requested}' was requested but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return device


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """'auto' means bf16 on GPUs that have it, fp16 on older GPUs, and full precision on CPU.

    CPU autocast exists but is slower than fp32 on most CPUs, so 'auto' leaves it off.
    """
    if requested != "auto":
        if requested != "no" and device.type == "cpu" and requested == "fp16":
            raise ConfigError("train.mixed_precision: fp16 needs a CUDA GPU; use 'no' or 'bf16' on CPU")
        return requested
    if device.type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
