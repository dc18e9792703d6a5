"""SDXL: the family is read from model_index.json, both text encoders are cached, full and LoRA fine-tuning run
on the engine, and the exported folders load and generate with stock StableDiffusionXLPipeline.

Everything runs on a tiny SDXL-architecture pipeline (`tiny_sdxl_model`) and 40 digits through the real stages.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from torch.utils.data import default_collate

from trainflow.artifacts import LocalArtifact
from trainflow.config import DiffusionTrainingConfig
from trainflow.diffusion.generation import generate_images, load_generation_pipeline
from trainflow.data.cache.latent_cache import CachedLatents
from trainflow.diffusion.model_families import detect_family
from trainflow.errors import ConfigError
from trainflow.stages.build_cache import build_cache
from trainflow.stages.evaluate import evaluate
from trainflow.stages.ingest_split import ingest_split
from trainflow.stages.train import train
from trainflow.tasks.text_to_image_training import TextToImageTask
from trainflow.training.run_identity import load_trainable_state

TRAIN = {"max_epochs": 1, "batch_size": 8, "device": "cpu", "mixed_precision": "no",
         "optimizer": {"learning_rate": 1e-2}, "schedule": {"name": "constant"}, "logging": {"tensorboard": False}}
LORA = {"rank": 4, "alpha": 8.0}


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, digits_dir) -> Path:
    tmp = tmp_path_factory.mktemp("sdxl-data")
    dataset, report = LocalArtifact(str(tmp / "dataset")), LocalArtifact(str(tmp / "report"))
    ingest_split({"dataset_dir": str(digits_dir), "resolution": 32, "label_column": "label", "max_records": 40}, 0,
                 dataset, report, task="text_to_image")
    return Path(dataset.path)


@pytest.fixture(scope="module")
def sdxl_cache(tmp_path_factory, dataset_dir, tiny_sdxl_model) -> Path:
    cache = LocalArtifact(str(tmp_path_factory.mktemp("sdxl-cache") / "cache"))
    facts = build_cache(str(dataset_dir), {"base": str(tiny_sdxl_model), "family": "sdxl"},
                        {"batch_size": 40, "storage_dtype": "float32"}, cache, task="text_to_image")
    assert facts["family"] == "sdxl"
    return Path(cache.path)


def train_run(cache: Path, base: Path, folder: Path, **overrides) -> Path:
    model, metrics = LocalArtifact(str(folder / "model")), LocalArtifact(str(folder / "metrics"))
    train("text_to_image", str(cache), {"base": str(base)}, {**TRAIN, **overrides}, 0, model, metrics,
          checkpoint_dir=str(folder / "checkpoints"))
    return Path(model.path)


def val_batch(cache: Path, count: int = 4) -> dict[str, torch.Tensor]:
    records = CachedLatents(cache, "val")
    return default_collate([records[i] for i in range(count)])


def unet_outputs(unet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The UNet's prediction on fixed noisy latents and timesteps, conditioned on the batch's cached SDXL inputs."""
    noisy = torch.randn(len(batch["index"]), 4, 8, 8, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        return unet(noisy, torch.tensor([10, 300, 600, 900][:len(noisy)]), encoder_hidden_states=batch["text"],
                    added_cond_kwargs={"text_embeds": batch["pooled"], "time_ids": batch["time_ids"]}).sample


def trained_model(base: Path, cache: Path, run_folder: Path, diffusion: dict):
    task = TextToImageTask(base, cache, DiffusionTrainingConfig.model_validate(diffusion), seed=0)
    model = task.build_model().eval()
    record = json.loads((run_folder / "model" / "trainflow_training.json").read_text())
    load_trainable_state(model, load_file(Path(record["best_checkpoint"]) / "model.safetensors"))
    return model


def stock_pipeline(folder: Path, lora: bool = False) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    if lora:
        pipe.load_lora_weights(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ================================================================ family detection and bad input

def test_the_family_comes_from_model_index_json(tiny_base_model, tiny_sdxl_model, tmp_path):
    assert detect_family(tiny_base_model).name == "sd" and detect_family(tiny_sdxl_model).name == "sdxl"
    other = tmp_path / "other"
    shutil.copytree(tiny_base_model, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(ConfigError, match=r"^model\.base: .* is a 'FluxPipeline' pipeline; trainflow fine-tunes "
                                          r"StableDiffusionPipeline .* or StableDiffusionXLPipeline"):
        detect_family(other)


@pytest.mark.parametrize("declared, base", [("sdxl", "sd"), ("sd", "sdxl")])
def test_a_config_for_the_other_family_is_one_sentence_before_anything_is_encoded(declared, base, tiny_base_model,
                                                                                   tiny_sdxl_model, dataset_dir, tmp_path):
    folder = tiny_sdxl_model if base == "sdxl" else tiny_base_model
    with pytest.raises(ConfigError) as error:
        build_cache(str(dataset_dir), {"base": str(folder), "family": declared}, {"batch_size": 8},
                    LocalArtifact(str(tmp_path / "cache")), task="text_to_image")
    message = str(error.value)
    assert message.startswith(f"model.family: the config says '{declared}'") and f"is '{base}'" in message
    assert "\n" not in message and not (tmp_path / "cache").exists()


def test_training_an_sdxl_base_on_an_sd_cache_names_the_field(tiny_sdxl_model, dataset_dir, tiny_base_model, tmp_path):
    cache = LocalArtifact(str(tmp_path / "sd-cache"))
    build_cache(str(dataset_dir), {"base": str(tiny_base_model)}, {"batch_size": 40, "storage_dtype": "float32"}, cache, task="text_to_image")
    with pytest.raises(ConfigError, match=r"^model\.base: the cache in .* was encoded for a 'sd' base but model\.base "
                                          r"is 'sdxl'; rebuild the cache"):
        train_run(Path(cache.path), tiny_sdxl_model, tmp_path)
    assert not (tmp_path / "model").exists()


# ================================================================ the cache

def test_the_cache_holds_what_stock_sdxl_computes_for_each_caption(sdxl_cache, tiny_sdxl_model):
    pipe = stock_pipeline(tiny_sdxl_model)
    with h5py.File(sdxl_cache / "latents.h5") as handle:
        captions = [c.decode() for c in handle["val"]["captions"][:3]]
        assert handle.attrs["family"] == "sdxl"
    batch = val_batch(sdxl_cache, 3)
    with torch.no_grad():
        states, _, pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
    torch.testing.assert_close(batch["text"], states, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch["pooled"], pooled, rtol=1e-5, atol=1e-5)
    assert batch["text"].shape[-1] == 64 + 32, "both encoders' hidden states, concatenated"
    # The 32x32 digits were neither resized nor cropped: original = target = 32x32, crop (0, 0), as the pipeline's default.
    expected = pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), torch.float32, text_encoder_projection_dim=32)
    assert torch.equal(batch["time_ids"], expected.expand(3, -1))
    assert batch["input_ids_2"].shape == batch["input_ids"].shape


# ================================================================ full fine-tuning and LoRA

@pytest.fixture(scope="module")
def full_run(tmp_path_factory, sdxl_cache, tiny_sdxl_model) -> Path:
    folder = tmp_path_factory.mktemp("sdxl-full")
    train_run(sdxl_cache, tiny_sdxl_model, folder)
    return folder


def test_full_fine_tuning_exports_a_folder_stock_sdxl_loads_and_generates_from(full_run, sdxl_cache, tiny_sdxl_model):
    model_dir = full_run / "model"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (model_dir / part).is_dir(), part
    pipe = stock_pipeline(model_dir)
    images = pipe(["a handwritten digit seven", "a handwritten digit two"], num_inference_steps=2, height=32, width=48,
                  output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 32, 48, 3) and bool((images >= 0).all() and (images <= 1).all())

    batch = val_batch(sdxl_cache)
    base_unet = UNet2DConditionModel.from_pretrained(tiny_sdxl_model / "unet")
    reference = trained_model(tiny_sdxl_model, sdxl_cache, full_run, {}).unet
    loaded, base, trained = (unet_outputs(u, batch) for u in (pipe.unet, base_unet, reference))
    assert (loaded - base).abs().max() > 1e-3, "training changed the UNet"
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-6)
    record = json.loads((model_dir / "trainflow_training.json").read_text())
    assert record["history"] and all(torch.isfinite(torch.tensor(h["val_loss"])) for h in record["history"])


def test_sdxl_test_loss_is_batch_size_independent_and_scores_the_base_beside_it(full_run, sdxl_cache, tiny_sdxl_model,
                                                                                 tmp_path):
    results = [evaluate(str(sdxl_cache), str(full_run / "model"), {"base": str(tiny_sdxl_model)},
                        {"batch_size": size, "device": "cpu", "bootstrap_resamples": 0}, 0,
                        LocalArtifact(str(tmp_path / f"m{size}")), task="text_to_image") for size in (2, 16)]
    assert results[0]["test_loss"] == pytest.approx(results[1]["test_loss"], rel=1e-6)
    assert results[0]["test_loss"] != pytest.approx(results[0]["base_test_loss"], rel=1e-4)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, sdxl_cache, tiny_sdxl_model) -> Path:
    folder = tmp_path_factory.mktemp("sdxl-lora")
    train_run(sdxl_cache, tiny_sdxl_model, folder, diffusion={"lora": LORA, "train_text_encoder": True})
    return folder


def test_lora_exports_one_adapter_file_stock_sdxl_loads_at_its_trained_scale(lora_run, sdxl_cache, tiny_sdxl_model):
    model_dir = lora_run / "model"
    adapter = load_file(model_dir / "pytorch_lora_weights.safetensors")
    assert {key.split(".")[0] for key in adapter} == {"unet", "text_encoder", "text_encoder_2"}
    shipped = load_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    base = load_file(tiny_sdxl_model / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(shipped[k], base[k]) for k in base), "the base UNet ships untouched beside the adapter"

    pipe = stock_pipeline(model_dir, lora=True)
    trained = trained_model(tiny_sdxl_model, sdxl_cache, lora_run, {"lora": LORA, "train_text_encoder": True})
    batch = val_batch(sdxl_cache)
    with torch.no_grad():
        loaded_states, _, loaded_pooled, _ = pipe.encode_prompt(
            [c.decode() for c in h5py.File(sdxl_cache / "latents.h5")["val"]["captions"][:4]], do_classifier_free_guidance=False)
        trained_states, trained_added = trained.batch_conditioning(batch)
    torch.testing.assert_close(loaded_states, trained_states, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loaded_pooled, trained_added["text_embeds"], rtol=1e-4, atol=1e-5)
    loaded, reference = unet_outputs(pipe.unet, batch), unet_outputs(trained.unet, batch)
    torch.testing.assert_close(loaded, reference, rtol=1e-4, atol=1e-5)
    images = pipe("a handwritten digit one", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert images.shape == (1, 32, 32, 3)


def test_score_generation_draws_through_the_adapter(lora_run, tiny_sdxl_model):
    captions = ["a handwritten digit one", "a handwritten digit eight"]
    with_adapter = load_generation_pipeline(lora_run / "model", "ddim", torch.device("cpu"))
    without = load_generation_pipeline(tiny_sdxl_model, "ddim", torch.device("cpu"))
    drawn = [generate_images(pipe, captions, 32, 2, 2.0, 2, seed=5, sizes=[(32, 32), (32, 48)]) for pipe in (with_adapter, without)]
    assert drawn[0].shape == (2, 3, 32, 48), "each caption at its own size, letterboxed onto one canvas"
    assert float(drawn[0][0, :, :, :8].abs().max()) == 0.0, "the 32x32 image is centred on a black 32x48 canvas"
    assert (drawn[0] - drawn[1]).abs().max() > 1e-3, "the adapter changes what is drawn"


def test_sdxl_sample_grids_are_what_stock_sdxl_draws_for_the_val_captions(full_run, sdxl_cache, tiny_sdxl_model):
    from diffusers import DDIMScheduler

    from trainflow.diffusion import validation_samples

    task = TextToImageTask(tiny_sdxl_model, sdxl_cache, DiffusionTrainingConfig(), seed=0)
    model = trained_model(tiny_sdxl_model, sdxl_cache, full_run, {})
    rng_before = torch.get_rng_state()
    images = task.validation_images(model, 3)
    assert torch.equal(torch.get_rng_state(), rng_before), "sampling draws from its own generator"
    assert torch.equal(task.validation_images(model, 3), images), "the same seed at every validation"

    pipe = stock_pipeline(full_run / "model")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    with h5py.File(sdxl_cache / "latents.h5") as handle:
        captions = [c.decode() for c in handle["val"]["captions"][:3]]
    latents = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    stock = pipe(captions, negative_prompt=[""] * 3, latents=latents, height=32, width=32, output_type="pt",
                 num_inference_steps=validation_samples.SAMPLE_STEPS,
                 guidance_scale=validation_samples.SAMPLE_GUIDANCE_SCALE).images
    assert images.shape == (3, 3, 32, 32)
    torch.testing.assert_close(images, stock, rtol=0, atol=1e-4)


def test_loading_a_run_config_with_the_wrong_family_stops_before_any_stage(tiny_base_model, digits_dir, tmp_path):
    import yaml

    from trainflow.config import load_config

    config = {"run_name": "r", "task": "text_to_image", "ingest": {"dataset_dir": str(digits_dir)},
              "model": {"base": str(tiny_base_model), "family": "sdxl"},
              "register": {"model_name": "m", "experiment": "e", "gates": []}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"^model\.family: the config says 'sdxl' .* is 'sd'"):
        load_config(path)
    config["model"]["family"] = "sd"
    path.write_text(yaml.safe_dump(config))
    assert load_config(path).model.family == "sd"
