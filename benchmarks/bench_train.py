"""`make bench-train`: trainflow's training engine beside a bare loop and a per-step-encode loop.

In one process, with the same UNet weights, batch size and precision, on scikit-learn's digits
ingested and cached by the real stages (ingest_split, build_cache):
  floor              a bare loop on latents and text embeddings already on the device (AdamW, DDPM epsilon loss)
  floor+accelerate   the same loop through accelerate (prepare, autocast, backward), to show accelerate's own cost
  ours               Trainer + TextToImageTask on the HDF5 latent cache; validation and checkpoints as rare as the
                     config allows (last step; plus the engine's checkpoint at every epoch end), TensorBoard off
  per-step-encode    the usual script: VAE encoder on the pixels and text encoder on the captions every step
                     (both already in device memory), then the same UNet step
Only steady-state steps are timed. The engine runs in a thread that the bench lets through N training steps at a
time (the task's training_step is the only hook): on CPU the contenders take turns in rounds of ten steps, so load
from other jobs falls on all alike; on CUDA they run one after another, so that peak memory is each one's own.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from trainflow.errors import UserFacingError  # noqa: E402

ROUND_STEPS = 10


class Workload:
    """What every contender shares: the assets, device, precision, batch size and the clock."""

    def __init__(self, args: argparse.Namespace, device: torch.device, work: Path) -> None:
        self.args, self.device, self.work = args, device, work
        self.base, self.dataset, self.cache = work / "base", work / "dataset", work / "cache"
        self.batch_size, self.precision, self.seed = args.batch_size, args.precision, args.seed
        self.warmup, self.steps = args.warmup_steps, args.steps

    def autocast(self):
        if self.precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.float16 if self.precision == "fp16" else torch.bfloat16)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> tuple[float, float]:
        """(clock, wall). On a CPU shared with other jobs, wall time measures the neighbours; this process's
        CPU time (one torch thread, no DataLoader workers) measures its own work. On CUDA the clock is wall time."""
        wall = time.perf_counter()
        return (wall if self.device.type == "cuda" else time.process_time()), wall


# ====================================================================== options and data
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steady-state steps per contender (default 50)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--batch-size", type=int, default=None, help="records per step (default 16 tiny, 8 sd15)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--resolution", type=int, default=None, help="image size in px (default 32 tiny, 512 sd15)")
    parser.add_argument("--precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--unet", choices=("tiny", "sd15"), default="tiny",
                        help="tiny: the demo's UNet; sd15: SD-1.5-sized UNet, VAE and text encoder, random weights (GPU only)")
    parser.add_argument("--records", type=int, default=512, help="digits records to ingest; 70%% form the train split")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU torch threads (default 1: on a loaded machine more threads mostly wait on each other)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="afterwards, run `ours` again under cProfile and print its N most expensive functions")
    parser.add_argument("--verbose", action="store_true", help="show the stages' and the engine's own output")
    parser.add_argument("--base", type=Path, default=None,
                        help="--unet tiny: an existing tiny pipeline folder (e.g. .trainflow/demo/tiny-sd-base) instead of "
                             "building one (about a minute)")
    parser.add_argument("--compare-options", action="store_true",
                        help="instead: the engine with each train.speed/EMA option on beside its defaults "
                             "(steps/s, peak memory, ratios; benchmarks/bench_train_options.py)")
    parser.add_argument("--options", default=None, metavar="A,B",
                        help="--compare-options: only these options, e.g. channels_last,ema (default: all; "
                             "the engine's defaults are always measured)")
    parser.add_argument("--smoke", action="store_true",
                        help="a seconds-long check that everything runs (2 timed steps, 64 records, batch 4); no figures to quote")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup_steps, args.records, args.batch_size = 2, 1, 64, args.batch_size or 4
    args.batch_size = args.batch_size or (8 if args.unet == "sd15" else 16)
    args.resolution = args.resolution or (512 if args.unet == "sd15" else 32)
    return args


def check_options(args: argparse.Namespace) -> torch.device:
    """The device to run on; UserFacingError for a combination that cannot run."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserFacingError("--device cuda: no CUDA GPU is visible; use --device auto or --device cpu")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    if args.unet == "sd15" and device.type != "cuda":
        raise UserFacingError("--unet sd15 trains an 860M-parameter UNet and needs a CUDA GPU; on CPU use --unet tiny")
    if args.precision == "fp16" and device.type != "cuda":
        raise UserFacingError("--precision fp16 needs a CUDA GPU; on CPU use --precision no or bf16")
    multiple = 64 if args.unet == "sd15" else 8  # VAE downsampling x UNet downsampling
    if args.resolution < multiple or args.resolution % multiple:
        raise UserFacingError(f"--resolution {args.resolution}: the {args.unet} models need a multiple of {multiple} px")
    if min(args.steps, args.batch_size, args.records, args.threads) < 1 or args.warmup_steps < 0:
        raise UserFacingError("--steps, --batch-size, --records and --threads must be at least 1, --warmup-steps at least 0")
    if args.base is not None and (args.unet != "tiny" or not (args.base / "model_index.json").is_file()):
        raise UserFacingError(f"--base {args.base}: give a tiny diffusers pipeline folder (with model_index.json), "
                              "with --unet tiny")
    if args.records > 1797:
        raise UserFacingError(f"--records {args.records}: scikit-learn's digits hold 1797 records; ask for at most that")
    if args.batch_size > int(args.records * 0.7) - 1:
        raise UserFacingError(f"--batch-size {args.batch_size} does not fit in the train split (70% of --records "
                              f"{args.records}); raise --records or lower --batch-size")
    return device


def build_sd15_sized_pipeline(folder: Path, seed: int) -> None:
    """A pipeline folder with Stable Diffusion 1.5's UNet, VAE and text-encoder shapes and random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from trainflow.demo.tiny_stable_diffusion import build_caption_tokenizer, caption_words

    torch.manual_seed(seed)
    tokenizer = build_caption_tokenizer(caption_words())
    tokenizer.model_max_length = 77
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
        scaling_factor=0.18215)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type="epsilon", clip_sample=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder, safe_serialization=True)


def prepare(load: Workload) -> None:
    """The base model, the digits ingested and split, and the latent cache, under load.work."""
    from trainflow.artifacts import LocalArtifact
    from trainflow.demo.digits_dataset import write_digits_imagefolder
    from trainflow.demo.tiny_stable_diffusion import build_tiny_pipeline
    from trainflow.stages.build_cache import build_cache
    from trainflow.stages.ingest_split import ingest_split

    args, raw = load.args, load.work / "digits"
    if args.unet == "sd15":
        build_sd15_sized_pipeline(load.base, args.seed)
    elif args.base is not None:
        shutil.copytree(args.base, load.base)
    else:
        build_tiny_pipeline(load.base, seed=args.seed, vae_steps=3)  # the VAE's quality does not change speed
    write_digits_imagefolder(raw)
    ingest_split({"dataset_dir": str(raw), "resolution": args.resolution, "label_column": "label",
                  "max_records": args.records}, args.seed, LocalArtifact(str(load.dataset)),
                 LocalArtifact(str(load.work / "ingest.md")), task="text_to_image")
    build_cache(str(load.dataset), {"base": str(load.base)},
                {"batch_size": 32, "storage_dtype": "float32", "device": str(load.device)}, LocalArtifact(str(load.cache)), task="text_to_image")


@contextlib.contextmanager
def quiet(verbose: bool):
    """Keep the stages' and the engine's own lines (and tqdm, which then sees no TTY) out of the table."""
    if verbose:
        yield
        return
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    except BaseException:
        sys.stderr.write(buffer.getvalue())
        raise


# ====================================================================== memory
class PeakMemory:
    """Peak memory in the block (max_memory_allocated on CUDA, process RSS sampled every 10 ms on CPU), in MiB;
    `added_mb` is the peak less what was in use when the block began: the contender's own share."""

    def __init__(self, device: torch.device) -> None:
        self.cuda, self.device, self._stop = device.type == "cuda", device, threading.Event()

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.start_mb = self.peak_mb = rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, rss_mb())
        self.added_mb = self.peak_mb - self.start_mb


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:  # Linux; resident pages are the second field
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ====================================================================== the loops
def load_unet(load: Workload) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(load.base / "unet").to(load.device).train()


def batch_schedule(load: Workload, count: int) -> torch.Tensor:
    """Row indices of every step, (steps, batch), on the device: one seeded permutation per pass over the data."""
    per_pass, steps = count // load.batch_size, load.warmup + load.steps
    passes = [torch.randperm(count, generator=torch.Generator().manual_seed(load.seed + e))[: per_pass * load.batch_size]
              for e in range(-(-steps // per_pass))]
    return torch.cat(passes).view(-1, load.batch_size)[:steps].to(load.device)


def unet_step(load: Workload, unet, optimizer, scaler, scheduler, latents, text, accelerator=None) -> None:
    """One DDPM epsilon-loss step: what the floor and per-step-encode share."""
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with accelerator.autocast() if accelerator else load.autocast():
        prediction = unet(noisy, timesteps, encoder_hidden_states=text).sample
        loss = F.mse_loss(prediction.float(), noise.float())
    if accelerator is not None:
        accelerator.backward(loss)
        optimizer.step()
    elif scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def floor_step(load: Workload, through_accelerate: bool):
    """step(i) of the bare loop on latents (one posterior draw per record) and embeddings held on the device."""
    from diffusers import DDPMScheduler

    from trainflow.data.cache.latent_cache import CachedLatents, read_cache_attrs, sample_latents

    data = CachedLatents(load.cache, "train", in_memory_limit_bytes=1 << 40)
    moments = torch.stack([data[i]["moments"] for i in range(len(data))])
    noise = torch.randn(moments[:, : moments.shape[1] // 2].shape, generator=torch.Generator().manual_seed(load.seed))
    latents = sample_latents(moments, float(read_cache_attrs(load.cache)["scaling_factor"]), noise).to(load.device)
    text = torch.stack([data[i]["text"] for i in range(len(data))]).to(load.device)
    scheduler = DDPMScheduler.from_pretrained(load.base / "scheduler")
    unet = load_unet(load)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=1e-2)
    scaler = torch.amp.GradScaler(load.device.type) if load.precision == "fp16" and not through_accelerate else None
    accelerator = None
    if through_accelerate:
        from accelerate import Accelerator

        accelerator = Accelerator(mixed_precision=load.precision, cpu=load.device.type == "cpu")
        unet, optimizer = accelerator.prepare(unet, optimizer)
    rows = batch_schedule(load, len(latents))
    return lambda i: unet_step(load, unet, optimizer, scaler, scheduler, latents[rows[i]], text[rows[i]], accelerator)


def per_step_encode_step(load: Workload):
    """step(i) that encodes the batch's pixels (VAE) and captions (text encoder), then runs the same UNet step."""
    from trainflow.data.manifest import read_manifest
    from trainflow.diffusion.model_loading import load_pipeline_parts, tokenize_captions
    from trainflow.data.cache.latent_cache_build import load_images

    entries = read_manifest(load.dataset, "train")
    parts = load_pipeline_parts(load.base)
    vae = parts.vae.to(load.device).requires_grad_(False)
    text_encoder = parts.text_encoder.to(load.device).requires_grad_(False)
    pixels = load_images(load.dataset, [e.image for e in entries]).to(load.device)
    input_ids = tokenize_captions(parts.tokenizer, [e.caption for e in entries]).to(load.device)
    unet = parts.unet.to(load.device).train()  # the same weights as load_unet's
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=1e-2)
    scaler = torch.amp.GradScaler(load.device.type) if load.precision == "fp16" else None
    scaling, rows = float(vae.config.scaling_factor), batch_schedule(load, len(pixels))

    def step(i: int) -> None:
        with torch.no_grad(), load.autocast():
            latents = vae.encode(pixels[rows[i]]).latent_dist.sample() * scaling
            text = text_encoder(input_ids[rows[i]])[0]
        unet_step(load, unet, optimizer, scaler, parts.noise_scheduler, latents.float(), text)

    return step


class LoopContender:
    def __init__(self, name: str, load: Workload, make_step) -> None:
        self.name, self.load, self.make_step = name, load, make_step
        self.rounds: list[tuple[float, float]] = []  # (clock, wall) seconds of each timed block
        self.note = ""

    def build(self) -> None:
        torch.manual_seed(self.load.seed)
        self.step = self.make_step(self.load)

    def run(self, first: int, count: int) -> tuple[float, float]:
        self.load.sync()
        started = self.load.now()
        for i in range(first, first + count):
            self.step(i)
        self.load.sync()
        return tuple(now - then for now, then in zip(self.load.now(), started))

    def close(self) -> None:
        del self.step


# ====================================================================== the engine
class EngineContender:
    """Trainer.fit() in a thread; its task's training_step waits at a gate until the bench lets steps through."""

    def __init__(self, load: Workload, name: str = "ours", overrides: dict | None = None) -> None:
        self.name, self.overrides = name, overrides or {}  # train-section keys on top of the bench's (train.speed, ema)
        self.load, self.rounds, self.note, self.error = load, [], "", None
        self.permits, self.parked = threading.Semaphore(0), threading.Semaphore(0)
        self.cycles: list[tuple[float, float]] = []  # (clock, wall) from one step's start to the next's
        self.went: tuple[float, float] | None = None

    def build(self, profiler: cProfile.Profile | None = None) -> None:
        self.trainer = build_trainer(self.load, self)
        self.thread = threading.Thread(target=self._fit, args=(profiler,), daemon=True)
        self.thread.start()
        self._wait_until_parked()

    def _fit(self, profiler: cProfile.Profile | None) -> None:
        try:
            (profiler.runcall if profiler else lambda fit: fit())(self.trainer.fit)
        except BaseException as exc:  # handed to the main thread
            self.error = exc
        finally:
            self.parked.release()

    def gate(self) -> None:
        """Called in the engine's thread as each training step starts: wait for a permit if none is left."""
        if not self.permits.acquire(blocking=False):
            self.load.sync()  # the steps let through so far are finished before their time is read
            self._arrived()
            self.parked.release()
            self.permits.acquire()
        else:
            self._arrived()
        self.went = self.load.now()

    def _arrived(self) -> None:
        if self.went is not None:
            self.cycles.append(tuple(now - went for now, went in zip(self.load.now(), self.went)))

    def _wait_until_parked(self) -> None:
        self.parked.acquire()
        if self.error is not None:
            raise self.error

    def run(self, first: int, count: int) -> tuple[float, float]:
        if count == 0:
            return 0.0, 0.0
        before = len(self.cycles)
        self.permits.release(count)
        self._wait_until_parked()
        if not self.thread.is_alive() or len(self.cycles) != before + count:
            raise RuntimeError(f"the engine stopped after {len(self.cycles)} steps; the bench asked for {first + count}")
        return tuple(map(sum, zip(*self.cycles[before:])))

    def close(self) -> None:
        """Let the last step through (validation and checkpoint follow it, untimed) and wait for fit() to end."""
        self.permits.release()
        self.thread.join()
        if self.error is not None:
            raise self.error
        per_epoch, timed = self.trainer.steps_per_epoch, self.cycles[self.load.warmup :]
        ends = [cycle for step, cycle in enumerate(timed, start=self.load.warmup + 1) if step % per_epoch == 0]
        extra = [1000 * (statistics.mean(x) - statistics.median(y)) for x, y in zip(zip(*ends), zip(*timed))] if ends else []
        self.note = (f"{len(ends)} epoch end(s) in the timed steps, each {extra[0]:.0f} ms ({extra[1]:.0f} ms wall) over the "
                     f"median step: the checkpoint the engine writes at every epoch end; {per_epoch} steps per epoch"
                     if ends else f"no epoch end in the timed steps ({per_epoch} steps per epoch)")
        del self.trainer


def build_trainer(load: Workload, contender: EngineContender):
    """The engine with validation and checkpoints as rare as the config allows, on a gated TextToImageTask."""
    from trainflow.config import TrainConfig, parse_section
    from trainflow.data.cache.attrs import read_cache_dataset_hash
    from trainflow.tasks.text_to_image_training import TextToImageTask
    from trainflow.training.engine import Trainer
    from trainflow.training.run_identity import RunIdentity

    class GatedTask(TextToImageTask):
        def training_step(self, model, batch):
            contender.gate()
            return super().training_step(model, batch)

    total = load.warmup + load.steps + 1  # the last step's validation and checkpoint come after the timed steps
    train = {
        "max_steps": total, "batch_size": load.batch_size, "mixed_precision": load.precision, "device": load.device.type,
        "optimizer": {"name": "adamw", "learning_rate": 1e-4, "weight_decay": 1e-2}, "schedule": {"name": "constant"},
        "grad_clip_norm": 0.0, "validation": {"every_epoch": False, "every_n_steps": total},
        "checkpoints": {"keep_top_k": 1, "total_limit": 2}, "early_stopping": {"patience": None},
        "logging": {"every_n_steps": 50, "tensorboard": False, "mlflow": False},
        "diffusion": {"caption_dropout": 0.0},  # the floor draws no dropout either
        "num_workers": 0,  # batches made in this process, so its CPU time holds all of the engine's work
        **contender.overrides,
    }
    cfg = parse_section(TrainConfig, train, "the bench's train section")
    task = GatedTask(load.base, load.cache, cfg.diffusion, load.seed)
    identity = RunIdentity.build("text_to_image", load.seed, {"base": str(load.base)}, train, read_cache_dataset_hash(load.cache))
    return Trainer(task, cfg, load.work / f"checkpoints-{time.monotonic_ns()}", load.seed, identity)


# ====================================================================== schedule and report
def measure(load: Workload, contenders: list, interleaved: bool) -> dict[str, tuple[float, float]]:
    """Warm up and time every contender; returns each one's own peak memory (MiB added during build and warm-up)."""
    own: dict[str, tuple[float, float]] = {}
    blocks = [(start, min(ROUND_STEPS, load.steps - start)) for start in range(0, load.steps, ROUND_STEPS)]
    for contender in contenders:
        with PeakMemory(load.device) as memory:
            contender.build()
            contender.run(0, load.warmup)
        own[contender.name] = (memory.peak_mb, memory.added_mb)
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


def print_report(load: Workload, contenders: list, memory: dict, header: str, interleaved: bool) -> tuple[float, float]:
    cpu = load.device.type == "cpu"
    rate = {c.name: load.steps / sum(s for s, _ in c.rounds) for c in contenders}
    floor = rate["floor"]
    print(header)
    print(f"{'contender':<17} {'steps/s':>8} {'s/step':>8} {'wall s/step':>11} "
          f"{'peak RSS MiB' if cpu else 'peak alloc MiB':>14} {'own MiB':>8} {'vs floor':>8}")
    for c in contenders:
        peak, added = memory[c.name]
        wall = sum(w for _, w in c.rounds) / load.steps
        print(f"{c.name:<17} {rate[c.name]:>8.2f} {1 / rate[c.name]:>8.4f} {wall:>11.4f} {peak:>14.0f} {added:>8.0f} "
              f"{rate[c.name] / floor:>8.2f}")
    if cpu:
        print("  steps/s and s/step count this process's CPU time (wall time on a shared machine counts the neighbours); "
              "peak RSS is the process's, own MiB what the contender added while it was built and warmed up")
    if interleaved and len(contenders[0].rounds) > 1:
        ours = next(c for c in contenders if c.name == "ours")
        per_round = [f / o for (f, _), (o, _) in zip(contenders[0].rounds, ours.rounds)]
        print(f"  taken in {len(per_round)} interleaved rounds; ours/floor per round ranged "
              f"{min(per_round):.2f}-{max(per_round):.2f} (median {statistics.median(per_round):.2f})")
    for c in contenders:
        if c.note:
            print(f"  {c.name}: {c.note}")
    return rate["ours"] / floor, rate["ours"] / rate["per-step-encode"]


def describe(load: Workload) -> str:
    from trainflow.data.cache.latent_cache import CachedLatents

    args = load.args
    params = sum(p.numel() for p in load_unet(load).parameters()) / 1e6
    channels, height, width = CachedLatents(load.cache, "train")[0]["moments"].shape
    where = (torch.cuda.get_device_name(load.device) if load.device.type == "cuda"
             else f"cpu ({torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores)")
    return (f"bench-train: {args.unet} UNet ({params:.1f} M parameters), batch {args.batch_size}, {args.resolution} px "
            f"(latents {channels // 2}x{height}x{width}), precision {args.precision}, {where}; "
            f"{args.steps} timed steps after {args.warmup_steps} warm-up; {args.records} digits records")


def print_profile(load: Workload, top: int) -> None:
    """A second engine run under cProfile, every step let through at once (setup and final validation included)."""
    engine, profiler = EngineContender(load), cProfile.Profile()
    with quiet(load.args.verbose):
        engine.build(profiler)
        engine.run(0, load.warmup + load.steps)
        engine.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print(f"ours under cProfile (slower than unprofiled; for where the time goes, not how much): {out.getvalue()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare_options:
        from bench_train_options import compare_options

        return compare_options(args)
    try:
        device = check_options(args)
        if device.type == "cpu":
            torch.set_num_threads(args.threads)
        interleaved = device.type == "cpu"
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            load = Workload(args, device, Path(tmp))
            contenders = [LoopContender("floor", load, lambda w: floor_step(w, False)),
                          LoopContender("floor+accelerate", load, lambda w: floor_step(w, True)),
                          EngineContender(load), LoopContender("per-step-encode", load, per_step_encode_step)]
            with quiet(args.verbose):
                prepare(load)
                memory = measure(load, contenders, interleaved)
                header = describe(load)
            ratios = print_report(load, contenders, memory, header, interleaved)
            if args.profile:
                print_profile(load, args.profile)
    except UserFacingError as exc:
        print(f"bench-train: {exc}", file=sys.stderr)
        return 2
    print(f"bench-train: ours/floor={ratios[0]:.2f} ours/per-step-encode={ratios[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
