"""Diffusion training options on the engine: v-prediction, LoRA, EMA, min-SNR, noise options,
text-encoder training, batch-size-independent validation, and TensorBoard sample grids.

Everything runs on the tiny base (`tiny_base_model`) and a cache of 40 digits built by the real
ingest_split and build_cache stages.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import h5py
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from torch.utils.data import default_collate
from transformers import CLIPTextModel

from trainflow.artifacts import LocalArtifact
from trainflow.config import DiffusionTrainingConfig, LoraConfig
from trainflow.diffusion.denoising_loss import diffusion_target, per_record_loss
from trainflow.data.cache.latent_cache import CachedLatents
from trainflow.errors import ConfigError
from trainflow.stages.build_cache import build_cache
from trainflow.stages.evaluate import evaluate
from trainflow.stages.ingest_split import ingest_split
from trainflow.stages.train import train
from trainflow.tasks import text_to_image_training
from trainflow.tasks.text_to_image_training import TextToImageTask
from trainflow.training.batch_plan import validation_loader
from trainflow.training.distributed import ProcessInfo
from trainflow.training.run_identity import load_trainable_state

TRAIN = {"max_epochs": 1, "batch_size": 8, "device": "cpu", "mixed_precision": "no",
         "optimizer": {"learning_rate": 1e-2}, "schedule": {"name": "constant"}, "logging": {"tensorboard": False}}


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """The tiny UNet runs fastest on one thread; two threads on a shared 2-core machine thrash (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, digits_dir, tiny_base_model) -> Path:
    tmp = tmp_path_factory.mktemp("t2i-cache")
    dataset, report, cache = (LocalArtifact(str(tmp / name)) for name in ("dataset", "report", "cache"))
    ingest_split({"dataset_dir": str(digits_dir), "resolution": 32, "label_column": "label", "max_records": 40}, 0,
                 dataset, report, task="text_to_image")
    build_cache(dataset.path, {"base": str(tiny_base_model)}, {"batch_size": 40, "storage_dtype": "float32"}, cache, task="text_to_image")
    return Path(cache.path)


def base_with_prediction_type(base: Path, folder: Path, prediction_type: str) -> Path:
    """A copy of the base whose scheduler declares another prediction_type (as a v-prediction model's does)."""
    shutil.copytree(base, folder)
    scheduler = DDPMScheduler.from_pretrained(base / "scheduler")
    DDPMScheduler.from_config(scheduler.config, prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def v_base(tmp_path_factory, tiny_base_model) -> Path:
    return base_with_prediction_type(tiny_base_model, tmp_path_factory.mktemp("v") / "tiny-sd-v", "v_prediction")


def train_run(cache: Path, base: Path, folder: Path, logs: Path | None = None, **overrides) -> Path:
    """Run the train stage; return the model folder."""
    config = {**TRAIN, **overrides}
    model, metrics = LocalArtifact(str(folder / "model")), LocalArtifact(str(folder / "metrics"))
    train("text_to_image", str(cache), {"base": str(base)}, config, 0, model, metrics,
          checkpoint_dir=str(folder / "checkpoints"), logs=LocalArtifact(str(logs)) if logs else None)
    return Path(model.path)


def first_records(cache: Path, split: str, count: int) -> dict[str, torch.Tensor]:
    records = CachedLatents(cache, split)
    return default_collate([records[i] for i in range(count)])


def near_certain_posterior(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with a (nearly) zero posterior variance, so a stub model knows each record's clean latent."""
    mean, _ = batch["moments"].chunk(2, dim=1)
    return {**batch, "moments": torch.cat([mean, torch.full_like(mean, -30.0)], dim=1)}


class NoiseRecoveringUNet(torch.nn.Module):
    """Reads the noise back out of the noisy latent (it knows the clean latent); answers epsilon or velocity."""

    def __init__(self, scheduler, clean: torch.Tensor, answer: str) -> None:
        super().__init__()
        self.scheduler, self.clean, self.answer = scheduler, clean, answer
        self.noise_seen: torch.Tensor | None = None
        self.timesteps_seen: torch.Tensor | None = None

    def forward(self, noisy, timesteps, text, input_ids):
        alpha_bar = self.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noise = (noisy - alpha_bar.sqrt() * self.clean) / (1 - alpha_bar).sqrt()
        self.noise_seen, self.timesteps_seen = noise, timesteps
        if self.answer == "epsilon":
            return noise
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * self.clean  # the velocity, by its definition


def recovering_stub(task: TextToImageTask, batch, answer: str) -> NoiseRecoveringUNet:
    clean = batch["moments"].chunk(2, dim=1)[0] * task.scaling_factor
    return NoiseRecoveringUNet(task.noise_scheduler, clean, answer)


def unet_outputs(unet, cache: Path) -> torch.Tensor:
    """The UNet's prediction on fixed inputs (seeded noise, fixed timesteps, val caption embeddings)."""
    batch = first_records(cache, "val", 4)
    generator = torch.Generator().manual_seed(123)
    noisy = torch.randn(4, 4, 8, 8, generator=generator)
    with torch.no_grad():
        return unet(noisy, torch.tensor([10, 300, 600, 900]), encoder_hidden_states=batch["text"]).sample


# ================================================================ 1. v-prediction

def test_v_prediction_target_is_the_schedulers_velocity(v_base):
    scheduler = DDPMScheduler.from_pretrained(v_base / "scheduler")
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([5, 400, 999])
    target = diffusion_target(scheduler, latents, noise, timesteps)
    assert torch.equal(target, scheduler.get_velocity(latents, noise, timesteps))
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    assert torch.allclose(target, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_training_step_loss_is_measured_against_the_bases_prediction_type(prediction_type, v_base, tiny_base_model,
                                                                           cache_dir):
    base = v_base if prediction_type == "v_prediction" else tiny_base_model
    task = TextToImageTask(base, cache_dir, DiffusionTrainingConfig(), seed=0)
    assert task.prediction_type == prediction_type
    batch = near_certain_posterior(first_records(cache_dir, "train", 8))
    losses = {}
    for answer in ("v_prediction", "epsilon"):
        torch.manual_seed(0)
        losses[answer] = float(task.training_step(recovering_stub(task, batch, answer), batch))
    other = "epsilon" if prediction_type == "v_prediction" else "v_prediction"
    assert losses[prediction_type] < 1e-6, "predicting exactly the target must give zero loss"
    assert losses[other] > 0.05, "predicting the other quantity must be penalised"


def test_an_unsupported_prediction_type_stops_before_training(tmp_path, tiny_base_model, cache_dir):
    base = base_with_prediction_type(tiny_base_model, tmp_path / "tiny-sd-sample", "sample")
    with pytest.raises(ConfigError, match=r"prediction_type 'sample' is not supported.*epsilon or v_prediction"):
        train_run(cache_dir, base, tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    assert not (tmp_path / "model").exists()


# ================================================================ 2. LoRA

LORA = {"rank": 4, "alpha": 8.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_base_model, cache_dir) -> Path:
    folder = tmp_path_factory.mktemp("lora")
    train_run(cache_dir, tiny_base_model, folder, diffusion={"lora": LORA})
    return folder


def trained_task_model(base: Path, cache: Path, run_folder: Path, diffusion: dict):
    """The task's model holding the run's best checkpoint: the reference for what training produced."""
    task = TextToImageTask(base, cache, DiffusionTrainingConfig.model_validate(diffusion), seed=0)
    model = task.build_model().eval()
    record = json.loads((run_folder / "model" / "trainflow_training.json").read_text())
    load_trainable_state(model, load_file(Path(record["best_checkpoint"]) / "model.safetensors"))
    return task, model


def test_lora_artifact_holds_the_adapter_and_the_untouched_base_parts(lora_run, tiny_base_model):
    model_dir = lora_run / "model"
    for part in ("pytorch_lora_weights.safetensors", "unet", "vae", "text_encoder", "tokenizer", "scheduler",
                 "model_index.json"):
        assert (model_dir / part).exists(), part
    shipped = load_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    base = load_file(tiny_base_model / "unet" / "diffusion_pytorch_model.safetensors")
    assert shipped.keys() == base.keys() and all(torch.equal(shipped[k], base[k]) for k in base)
    adapter = load_file(model_dir / "pytorch_lora_weights.safetensors")
    assert adapter and all(key.startswith("unet.") and "lora" in key for key in adapter)


def test_lora_artifact_loads_with_stock_diffusers_and_reproduces_the_trained_unet(lora_run, tiny_base_model,
                                                                                   cache_dir):
    model_dir = lora_run / "model"
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.load_lora_weights(model_dir)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a handwritten digit seven", num_inference_steps=2, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and bool((image >= 0).all() and (image <= 1).all())

    base_unet = UNet2DConditionModel.from_pretrained(tiny_base_model / "unet")
    _, trained = trained_task_model(tiny_base_model, cache_dir, lora_run, {"lora": LORA})
    loaded, base, reference = (unet_outputs(u, cache_dir) for u in (pipe.unet, base_unet, trained.unet))
    assert (loaded - base).abs().max() > 1e-3, "the trained adapter must change the UNet's output"
    # alpha != rank: the loaded adapter must keep training's scale alpha / rank, not diffusers' default of 1.
    torch.testing.assert_close(loaded, reference, rtol=1e-4, atol=1e-5)


def test_merged_lora_export_is_a_full_unet_equal_to_base_plus_adapter(lora_run, tiny_base_model, cache_dir, tmp_path):
    task, trained = trained_task_model(tiny_base_model, cache_dir, lora_run, {"lora": {**LORA, "merge": True}})
    task.export(trained, tmp_path / "merged")
    assert not (tmp_path / "merged" / "pytorch_lora_weights.safetensors").exists()
    merged = UNet2DConditionModel.from_pretrained(tmp_path / "merged" / "unet")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(unet_outputs(merged, cache_dir), unet_outputs(trained.unet, cache_dir),
                               rtol=1e-4, atol=1e-5)


def test_a_text_encoder_adapter_travels_in_the_same_file_and_loads_at_its_trained_scale(tmp_path, tiny_base_model,
                                                                                         cache_dir):
    diffusion = {"lora": LORA, "train_text_encoder": True}
    model_dir = train_run(cache_dir, tiny_base_model, tmp_path, diffusion=diffusion)
    assert any(key.startswith("text_encoder.") for key in load_file(model_dir / "pytorch_lora_weights.safetensors"))
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.load_lora_weights(model_dir)
    _, trained = trained_task_model(tiny_base_model, cache_dir, tmp_path, diffusion)
    ids = first_records(cache_dir, "val", 4)["input_ids"]
    with torch.no_grad():
        loaded, reference = pipe.text_encoder(ids)[0], trained.text_encoder(ids)[0]
        base = CLIPTextModel.from_pretrained(tiny_base_model / "text_encoder")(ids)[0]
    assert (loaded - base).abs().max() > 1e-3, "the text-encoder adapter was trained and applied"
    torch.testing.assert_close(loaded, reference, rtol=1e-4, atol=1e-5)


def test_lora_trains_only_the_adapter_parameters(tiny_base_model, cache_dir):
    base_unet = UNet2DConditionModel.from_pretrained(tiny_base_model / "unet")
    targets = [module for name, module in base_unet.named_modules()
               if any(name.endswith("." + target) for target in LORA["target_modules"])]
    expected = sum(LORA["rank"] * (module.in_features + module.out_features) for module in targets)
    task = TextToImageTask(tiny_base_model, cache_dir, DiffusionTrainingConfig(lora=LoraConfig(**LORA)), seed=0)
    trainable = [(name, p) for name, p in task.build_model().named_parameters() if p.requires_grad]
    assert targets and sum(p.numel() for _, p in trainable) == expected
    assert all("lora_" in name for name, _ in trainable)


def test_lora_on_modules_the_unet_lacks_names_the_field(tmp_path, tiny_base_model, cache_dir):
    lora = {**LORA, "target_modules": ["q_proj", "v_proj"]}  # a text encoder's names, not a UNet's
    with pytest.raises(ConfigError, match=r"train\.diffusion\.lora\.target_modules: none of \['q_proj', 'v_proj'\]"):
        train_run(cache_dir, tiny_base_model, tmp_path, diffusion={"lora": lora})
    assert not (tmp_path / "model").exists()


def test_test_loss_of_a_lora_model_does_not_depend_on_the_batch_size(lora_run, tiny_base_model, cache_dir, tmp_path):
    results = [evaluate(str(cache_dir), str(lora_run / "model"), {"base": str(tiny_base_model)},
                        {"batch_size": size, "device": "cpu"}, 0, LocalArtifact(str(tmp_path / f"m{size}")), task="text_to_image")
               for size in (2, 16)]
    assert results[0]["test_loss"] == pytest.approx(results[1]["test_loss"], rel=1e-6)
    assert results[0]["test_loss"] != pytest.approx(results[0]["base_test_loss"], rel=1e-4), "the adapter is applied"


# ================================================================ 3. validation and test losses

def validation_loss(task: TextToImageTask, model, batch_size: int) -> float:
    """What the engine computes: validation_step summed over the val loader's batches, then finalize_validation."""
    totals: dict[str, torch.Tensor] = {}
    for batch in validation_loader(task.val_dataset(), ProcessInfo(), batch_size, num_workers=0, pin_memory=False):
        for name, value in task.validation_step(model, batch).items():
            totals[name] = totals.get(name, 0) + value.double()
    return task.finalize_validation(totals)["loss"]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_validation_loss_does_not_depend_on_the_batch_size_nor_on_the_call(prediction_type, tiny_base_model, v_base,
                                                                            cache_dir):
    base = v_base if prediction_type == "v_prediction" else tiny_base_model
    task = TextToImageTask(base, cache_dir, DiffusionTrainingConfig(), seed=0)
    model = task.build_model().eval()
    rng_before = torch.get_rng_state()
    with torch.no_grad():
        by_four, by_sixteen, again = (validation_loss(task, model, size) for size in (4, 16, 4))
    assert len(task.val_dataset()) > 4, "batch size 4 must split the val set into several batches"
    assert by_four == pytest.approx(by_sixteen, rel=1e-6)
    assert by_four == again, "the same model on the same split gives the same loss, call after call"
    assert torch.equal(torch.get_rng_state(), rng_before), "validation draws its noise from its own generators"
    other = TextToImageTask(base, cache_dir, DiffusionTrainingConfig(), seed=1)
    with torch.no_grad():
        assert validation_loss(other, model, 4) != by_four, "the noise is seeded by the run seed"


# ================================================================ 4. EMA

def test_ema_exports_the_best_checkpoints_averaged_weights_not_the_raw_ones(tmp_path, tiny_base_model, cache_dir):
    model_dir = train_run(cache_dir, tiny_base_model, tmp_path, max_epochs=2, ema={"decay": 0.9})
    record = json.loads((model_dir / "trainflow_training.json").read_text())
    best = Path(record["best_checkpoint"])
    raw, shadow = load_file(best / "model.safetensors"), load_file(best / "ema.safetensors")
    task = TextToImageTask(tiny_base_model, cache_dir, DiffusionTrainingConfig(), seed=0)
    trainable = [name for name, p in task.build_model().named_parameters() if p.requires_grad]
    assert len(shadow) == len(trainable)
    shipped = load_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    for index, name in enumerate(trainable):
        assert torch.equal(shipped[name.removeprefix("unet.")], shadow[str(index)]), name
    assert sum(not torch.equal(raw[name], shadow[str(i)]) for i, name in enumerate(trainable)) > len(trainable) // 2


# ================================================================ 5. loss weighting, noise options, checkpointing, text encoder

@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_are_min_snr_gamma_over_snr(prediction_type, tiny_base_model, v_base):
    scheduler = DDPMScheduler.from_pretrained((v_base if prediction_type == "v_prediction" else tiny_base_model) / "scheduler")
    timesteps = torch.tensor([0, 40, 150, 400, 999])
    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(5, 4, 8, 8, generator=generator), torch.randn(5, 4, 8, 8, generator=generator)
    alpha_bar = scheduler.alphas_cumprod[timesteps].double()
    snr = alpha_bar / (1 - alpha_bar)
    gamma = 5.0
    expected = torch.minimum(snr, torch.tensor(gamma)) / (snr + 1 if prediction_type == "v_prediction" else snr)
    weights = per_record_loss(prediction, target, scheduler, timesteps, gamma) / per_record_loss(prediction, target, scheduler, timesteps)
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=0)
    assert (snr > gamma).any() and (snr < gamma).any(), "both clipped and unclipped timesteps are covered"


def test_training_step_applies_the_min_snr_weight_of_its_timestep(tiny_base_model, cache_dir):
    plain = TextToImageTask(tiny_base_model, cache_dir, DiffusionTrainingConfig(), seed=0)
    weighted = TextToImageTask(tiny_base_model, cache_dir, DiffusionTrainingConfig(snr_gamma=5.0), seed=0)
    batch = near_certain_posterior(first_records(cache_dir, "train", 1))
    clipped = set()
    for seed in range(40):
        stub = recovering_stub(plain, batch, "v_prediction")  # a wrong answer, so the loss is not zero
        torch.manual_seed(seed)
        unweighted = plain.training_step(stub, batch)
        torch.manual_seed(seed)
        loss = weighted.training_step(stub, batch)
        alpha_bar = plain.noise_scheduler.alphas_cumprod[stub.timesteps_seen].double()
        snr = float(alpha_bar / (1 - alpha_bar))
        assert float(loss / unweighted) == pytest.approx(min(snr, 5.0) / snr, rel=1e-5)
        clipped.add(snr > 5.0)
        if clipped == {True, False}:
            break
    assert clipped == {True, False}, "draws with SNR above and below gamma are both checked"


def test_noise_offset_shifts_each_channel_and_is_part_of_the_target(tiny_base_model, cache_dir):
    batch = near_certain_posterior(first_records(cache_dir, "train", 16))
    channel_spread = {}
    for offset in (0.0, 1.0):
        task = TextToImageTask(tiny_base_model, cache_dir, DiffusionTrainingConfig(noise_offset=offset), seed=0)
        stub = recovering_stub(task, batch, "epsilon")
        torch.manual_seed(0)
        assert float(task.training_step(stub, batch)) < 1e-6, "the target is the noise that was added, offset included"
        channel_spread[offset] = float(stub.noise_seen.mean(dim=(2, 3)).std())
    # Per-channel means of 8x8 unit noise spread by 1/8; an offset of 1.0 adds a unit-spread constant per channel.
    assert channel_spread[0.0] < 0.25 and channel_spread[1.0] > 0.6


def test_input_perturbation_noises_the_input_but_not_the_target(tiny_base_model, cache_dir):
    batch = near_certain_posterior(first_records(cache_dir, "train", 16))
    losses = {}
    for perturbation in (0.0, 0.5):
        task = TextToImageTask(tiny_base_model, cache_dir, DiffusionTrainingConfig(input_perturbation=perturbation), seed=0)
        torch.manual_seed(0)
        losses[perturbation] = float(task.training_step(recovering_stub(task, batch, "epsilon"), batch))
    assert losses[0.0] < 1e-6
    assert losses[0.5] == pytest.approx(0.5**2, rel=0.15), "the input carries extra noise of std 0.5 the target lacks"


def one_step_gradients(task: TextToImageTask, batch) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of one training step from a fresh model, and how often a late UNet resnet ran forward.

    A late block: gradients for every trainable layer before it (LoRA's too) must flow back through it.
    """
    torch.manual_seed(0)  # LoRA's initialisation and the step's draws
    model = task.build_model()
    calls = []
    # A pre-hook: non-reentrant checkpointing stops its recomputation early, before forward hooks would run.
    model.unet.up_blocks[-1].resnets[0].register_forward_pre_hook(lambda *_: calls.append(1))
    torch.manual_seed(1)
    task.training_step(model, batch).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}, len(calls)


@pytest.mark.parametrize("options", [{}, {"lora": LORA}, {"train_text_encoder": True}],
                         ids=["full", "lora", "text-encoder"])
def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(options, tiny_base_model, cache_dir):
    batch = first_records(cache_dir, "train", 4)
    plain = TextToImageTask(tiny_base_model, cache_dir, DiffusionTrainingConfig.model_validate(options), seed=0)
    saving = TextToImageTask(tiny_base_model, cache_dir,
                             DiffusionTrainingConfig.model_validate({**options, "gradient_checkpointing": True}), seed=0)
    expected, forward_once = one_step_gradients(plain, batch)
    gradients, forward_twice = one_step_gradients(saving, batch)
    assert (forward_once, forward_twice) == (1, 2), "checkpointed blocks run again during backward"
    assert gradients.keys() == expected.keys()
    missing = [name for name, grad in gradients.items() if grad is None]
    assert not missing, f"no gradient reached {missing[:3]}"
    for name, grad in gradients.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_text_encoder_training_reaches_the_encoder_and_ships_it(tmp_path, tiny_base_model, cache_dir):
    task = TextToImageTask(tiny_base_model, cache_dir, DiffusionTrainingConfig(train_text_encoder=True), seed=0)
    gradients, _ = one_step_gradients(task, first_records(cache_dir, "train", 4))
    encoder_grads = [grad for name, grad in gradients.items() if name.startswith("text_encoder.")]
    assert encoder_grads and sum(float(g.abs().sum()) for g in encoder_grads if g is not None) > 0

    diffusion = {"train_text_encoder": True, "text_encoder_learning_rate": 1e-3, "gradient_checkpointing": True,
                 "snr_gamma": 5.0, "noise_offset": 0.05, "input_perturbation": 0.1}
    model_dir = train_run(cache_dir, tiny_base_model, tmp_path, diffusion=diffusion)
    shipped = load_file(model_dir / "text_encoder" / "model.safetensors")
    base = load_file(tiny_base_model / "text_encoder" / "model.safetensors")
    assert shipped.keys() == base.keys()
    assert not all(torch.equal(shipped[k], base[k]) for k in base), "the trained text encoder is exported"
    record = json.loads((model_dir / "trainflow_training.json").read_text())
    assert all(torch.isfinite(torch.tensor(h["val_loss"])) for h in record["history"])
    result = evaluate(str(cache_dir), str(model_dir), {"base": str(tiny_base_model)}, {"batch_size": 16, "device": "cpu"},
                      0, LocalArtifact(str(tmp_path / "eval")), task="text_to_image")
    assert result["test_loss"] != pytest.approx(result["base_test_loss"], rel=1e-4)


# ================================================================ 6. TensorBoard sample grids

@pytest.fixture
def vae_loads(monkeypatch) -> list[str]:
    """Every VAE the text-to-image task loads (to prove it loads one only when sample images are on)."""
    loads: list[str] = []
    original = AutoencoderKL.from_pretrained

    def counting(folder, *args, **kwargs):
        loads.append(str(folder))
        return original(folder, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", counting)
    return loads


@pytest.mark.parametrize("source", ["epsilon base", "v_prediction base", "lora artifact"])
def test_sample_images_are_what_stock_diffusers_draws_for_the_val_captions(source, tiny_base_model, v_base, lora_run,
                                                                          cache_dir, vae_loads):
    if source == "lora artifact":
        task, model = trained_task_model(tiny_base_model, cache_dir, lora_run, {"lora": LORA})
        folder = lora_run / "model"
    else:
        folder = v_base if source == "v_prediction base" else tiny_base_model
        task = TextToImageTask(folder, cache_dir, DiffusionTrainingConfig(), seed=0)
        model = task.build_model().eval()
    assert vae_loads == []
    rng_before = torch.get_rng_state()
    images = task.validation_images(model, 3)
    assert torch.equal(torch.get_rng_state(), rng_before), "sampling draws from its own generator"
    assert torch.equal(task.validation_images(model, 3), images), "the same seed at every validation"
    assert len(vae_loads) == 1, "the VAE is loaded once, on first use"

    with h5py.File(cache_dir / "latents.h5") as handle:
        captions = [caption.decode() for caption in handle["val"]["captions"][:3]]
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    if source == "lora artifact":
        pipe.load_lora_weights(folder)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    stock = pipe(captions, latents=latents, num_inference_steps=text_to_image_training.SAMPLE_STEPS, height=32, width=32,
                 guidance_scale=text_to_image_training.SAMPLE_GUIDANCE_SCALE, output_type="pt").images
    assert images.shape == (3, 3, 32, 32)
    torch.testing.assert_close(images, stock, rtol=0, atol=1e-4)


def test_validation_logs_a_sample_grid_to_tensorboard_without_moving_training(tmp_path, tiny_base_model, cache_dir,
                                                                              vae_loads):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from trainflow.training.training_log import read_step_log

    logging = {"tensorboard": True, "every_n_steps": 1}
    with_images = train_run(cache_dir, tiny_base_model, tmp_path / "on", logs=tmp_path / "on-logs", max_epochs=2,
                            logging={**logging, "sample_images": 4})
    assert vae_loads == [str(tiny_base_model / "vae")], "the VAE is loaded once, at the first validation"
    events = EventAccumulator(str(tmp_path / "on-logs"), size_guidance={"images": 0})
    events.Reload()
    assert "val/samples" in events.Tags()["images"]
    grids = events.Images("val/samples")
    record = json.loads((with_images / "trainflow_training.json").read_text())
    assert [g.step for g in grids] == [h["step"] for h in record["history"]] == [3, 6]
    pictures = [Image.open(io.BytesIO(g.encoded_image_string)).convert("RGB") for g in grids]
    assert all(p.size == (4 * 34 + 2, 36) for p in pictures), "4 images of 32x32 in one row, 2 px padding"
    pixels = [torch.tensor(list(p.getdata()), dtype=torch.float32) for p in pictures]
    assert all(float(p.std()) > 1.0 for p in pixels), "generated images, not a blank grid"
    assert not torch.equal(pixels[0], pixels[1]), "same seed, trained further: the second grid differs"

    vae_loads.clear()
    train_run(cache_dir, tiny_base_model, tmp_path / "off", logs=tmp_path / "off-logs", max_epochs=2,
              logging={**logging, "sample_images": 0})
    assert vae_loads == [], "no sample images, no VAE"
    on = [(r["step"], r["loss"]) for r in read_step_log(tmp_path / "on" / "checkpoints")]
    off = [(r["step"], r["loss"]) for r in read_step_log(tmp_path / "off" / "checkpoints")]
    assert on == off, "drawing sample images must not consume the training random stream"
