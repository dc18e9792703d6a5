"""`bench_train.py --compare-options`: the engine with each train.speed / EMA option on, beside its defaults.

Same workload as bench_train (the tiny or SD-1.5-sized UNet on the digits' latent cache, Trainer + TextToImageTask
with validation and checkpoints as rare as the config allows); one engine per option. On CPU the engines take
turns in rounds of ten steps (load from other jobs falls on all alike) and steps/s counts this process's CPU
time; on CUDA they run one after another, so each peak memory is its own. An option that cannot act on the
device (TF32, fused or 8-bit AdamW on a CPU) is still run: its row shows what the no-op costs, and the engine's
own line says why. `compile` is left out of --smoke (compiling a UNet takes minutes on a CPU).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_train import EngineContender, PeakMemory, Workload, check_options, describe, prepare, quiet
from trainflow.errors import UserFacingError

OPTIONS: dict[str, dict] = {
    "default": {},
    "tf32": {"speed": {"tf32": True}},
    "compile": {"speed": {"compile": True}},
    "fused_optimizer": {"speed": {"fused_optimizer": True}},
    "channels_last": {"speed": {"channels_last": True}},
    "adamw_8bit": {"speed": {"adamw_8bit": True}},
    "ema": {"ema": {"decay": 0.999}},
    "ema_every_10_on_cpu": {"ema": {"decay": 0.999, "update_every": 10, "on_cpu": True}},
}
ROUND_STEPS = 10


def measure(load: Workload, contenders: list[EngineContender], interleaved: bool) -> dict[str, tuple[float, float, float]]:
    """Build, warm up and time every contender; (peak MiB, own MiB, setup seconds) per name."""
    own: dict[str, tuple[float, float, float]] = {}
    blocks = [(start, min(ROUND_STEPS, load.steps - start)) for start in range(0, load.steps, ROUND_STEPS)]
    for contender in contenders:
        started = time.perf_counter()
        with PeakMemory(load.device) as memory:
            contender.build()
            contender.run(0, load.warmup)
        own[contender.name] = (memory.peak_mb, memory.added_mb, time.perf_counter() - started)
        if not interleaved:
            contender.rounds = [contender.run(load.warmup + first, count) for first, count in blocks]
            contender.close()
            gc.collect()
    if interleaved:
        for first, count in blocks:
            for contender in contenders:
                contender.rounds.append(contender.run(load.warmup + first, count))
        for contender in contenders:
            contender.close()
    return own


def print_comparison(load: Workload, contenders: list[EngineContender], memory: dict, header: str) -> dict[str, float]:
    """The table; returns each option's steps/s relative to the default."""
    cpu = load.device.type == "cpu"
    rate = {c.name: load.steps / sum(clock for clock, _ in c.rounds) for c in contenders}
    print(header)
    print(f"{'option':<21} {'steps/s':>8} {'s/step':>8} {'vs default':>10} {'peak RSS MiB' if cpu else 'peak alloc MiB':>14} "
          f"{'own MiB':>8} {'own vs default':>14} {'setup s':>8}")
    base_own = memory["default"][1]
    ratios = {}
    for c in contenders:
        peak, added, setup = memory[c.name]
        ratios[c.name] = rate[c.name] / rate["default"]
        own_ratio = f"{added / base_own:>14.2f}" if base_own > 0 else f"{'—':>14}"
        print(f"{c.name:<21} {rate[c.name]:>8.2f} {1 / rate[c.name]:>8.4f} {ratios[c.name]:>10.2f} {peak:>14.0f} "
              f"{added:>8.0f} {own_ratio} {setup:>8.1f}")
    if cpu:
        print("  steps/s count this process's CPU time; own MiB is what an engine added to the process's RSS while it was "
              "built and warmed up (peak RSS is the whole process's); setup s includes compiling, when on")
    return ratios


def compare_options(args: argparse.Namespace) -> int:
    try:
        device = check_options(args)
        if device.type == "cpu":
            torch.set_num_threads(args.threads)
        asked = args.options.split(",") if args.options else list(OPTIONS)
        unknown = [name for name in asked if name not in OPTIONS]
        if unknown:
            raise UserFacingError(f"--options: {', '.join(unknown)} is not an option; choose from {', '.join(OPTIONS)}")
        names = [name for name in OPTIONS if (name == "default" or name in asked) and not (args.smoke and name == "compile")]
        with tempfile.TemporaryDirectory(prefix="bench-train-options-") as tmp:
            load = Workload(args, device, Path(tmp))
            contenders = [EngineContender(load, name, OPTIONS[name]) for name in names]
            with quiet(args.verbose):
                prepare(load)
                memory = measure(load, contenders, interleaved=device.type == "cpu")
                header = describe(load)
            ratios = print_comparison(load, contenders, memory, header)
            if args.smoke:
                print("  --smoke: compile left out (minutes to compile on a CPU); 2 timed steps, not figures to quote")
    except UserFacingError as exc:
        print(f"bench-train: {exc}", file=sys.stderr)
        return 2
    print("bench-train options: " + " ".join(f"{name}={ratio:.2f}" for name, ratio in ratios.items()))
    return 0
