"""`train.speed`: TF32, torch.compile, fused and 8-bit AdamW, channels-last; each says once what it did and why.

An option that cannot act where the run is (TF32 or a fused optimizer on a CPU, 8-bit AdamW without CUDA and
bitsandbytes, a compiler that is missing or fails) is a logged no-op, never an error: the same config runs on a
laptop and on the cluster's GPUs. Attention needs no switch: diffusers' UNet uses AttnProcessor2_0, i.e.
torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient kernels where the GPU has them).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from trainflow.config.training import OptimizerConfig, SpeedConfig


def apply_backend_options(cfg: SpeedConfig, device: torch.device, say: Callable[[str], None]) -> None:
    """Process-wide switches (TF32), set before the model is built."""
    if not cfg.tf32:
        return
    if device.type != "cuda":
        say(f"train.speed.tf32: no effect on {device.type} (TensorFloat-32 is an NVIDIA Ampere-or-newer GPU format)")
        return
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        say(f"train.speed.tf32: no effect on {torch.cuda.get_device_name(device)} (compute capability {major}.x; "
            "TensorFloat-32 needs Ampere, 8.0, or newer)")
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def compiler_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run here (a missing C++ compiler, Triton, an unsupported Python), or None when a
    tiny function compiles and runs: found in seconds instead of at the first training step."""
    try:
        probe = torch.compile(lambda x: torch.sin(x) * 2 + 1, dynamic=False)
        probe(torch.ones(4, device=device))
    except Exception as error:  # the compiler's own failures come in many types (BackendCompilerFailed, OSError, ...)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"{type(error).__name__}: {first_line[:200]}"
    return None


def prepare_model(model: nn.Module, compile_targets: list[nn.Module], cfg: SpeedConfig, device: torch.device,
                  say: Callable[[str], None]) -> nn.Module:
    """Channels-last and torch.compile, in place (parameter names, checkpoints and exports stay the same)."""
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        reason = compiler_unavailable(device)
        if reason is not None:
            say(f"train.speed.compile: torch.compile is unavailable here ({reason}); training runs uncompiled")
            return model
        from torch._dynamo import config as dynamo_config

        # A graph the compiler cannot handle later on runs eagerly instead of stopping training.
        dynamo_config.suppress_errors = True
        for module in compile_targets:
            module.compile()  # nn.Module.compile: in place, so state_dict keys keep their names
    return model


def optimizer_options(cfg: SpeedConfig, optimizer: OptimizerConfig, device: torch.device,
                      say: Callable[[str], None]) -> dict:
    """Keyword options for build_optimizer: fused kernels, or bitsandbytes' 8-bit AdamW where it runs."""
    options: dict = {}
    if cfg.adamw_8bit:
        reason = eight_bit_unavailable(optimizer, device)
        if reason is None:
            options["eight_bit"] = True
        else:
            say(f"train.speed.adamw_8bit: {reason}; training uses torch's AdamW")
    if cfg.fused_optimizer and not options:
        if device.type != "cuda":
            say(f"train.speed.fused_optimizer: no effect on {device.type} (the fused AdamW kernels used here are CUDA's)")
        elif optimizer.name not in ("adamw", "adam"):
            say(f"train.speed.fused_optimizer: no effect with optimizer {optimizer.name} (fused kernels: adamw, adam)")
        else:
            options["fused"] = True
    return options


def eight_bit_unavailable(optimizer: OptimizerConfig, device: torch.device) -> str | None:
    if optimizer.name != "adamw":
        return f"8-bit AdamW replaces optimizer adamw, not {optimizer.name}"
    if device.type != "cuda":
        return f"bitsandbytes' 8-bit AdamW needs a CUDA GPU and this run is on {device.type}"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "bitsandbytes is not installed (pip install bitsandbytes on the CUDA image)"
    return None
