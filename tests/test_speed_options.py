"""train.speed and EMA options on a CPU: each gives a working run; what cannot act here says so once and changes
nothing; a compiler that fails falls back with one message; EMA updated every N steps (and kept on the CPU)
resumes exactly."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))

from engine_tasks import WineTask  # noqa: E402
from trainflow.config import TrainConfig  # noqa: E402
from trainflow.training import speed_options  # noqa: E402
from trainflow.training.engine import Trainer  # noqa: E402
from trainflow.training.run_identity import RunIdentity  # noqa: E402
from trainflow.training.training_log import read_step_log  # noqa: E402

CONFIG = {
    "max_epochs": 1, "batch_size": 8, "device": "cpu", "deterministic": True, "mixed_precision": "no",
    "optimizer": {"name": "adamw", "learning_rate": 0.01}, "schedule": {"name": "constant"},
    "checkpoints": {"every_n_steps": 2, "keep_top_k": 2, "total_limit": 20},
    "validation": {"every_n_steps": 5, "every_epoch": True},
    "early_stopping": {"monitor": "val_loss", "patience": None}, "logging": {"tensorboard": False},
}


def trainer(folder: Path, **changes) -> Trainer:
    cfg = TrainConfig.model_validate({**CONFIG, **changes})
    identity = RunIdentity.build("classification", 0, {}, cfg.model_dump(mode="json"), "wine")
    return Trainer(WineTask(), cfg, folder, 0, identity)


def losses(folder: Path) -> list[tuple[int, float]]:
    return [(record["step"], record["loss"]) for record in read_step_log(folder)]


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> list[tuple[int, float]]:
    folder = tmp_path_factory.mktemp("plain")
    trainer(folder).fit()
    return losses(folder)


@pytest.mark.parametrize("option, message", [
    ("tf32", "train.speed.tf32: no effect on cpu"),
    ("fused_optimizer", "train.speed.fused_optimizer: no effect on cpu"),
    ("adamw_8bit", "train.speed.adamw_8bit: bitsandbytes' 8-bit AdamW needs a CUDA GPU and this run is on cpu; "
                   "training uses torch's AdamW"),
])
def test_an_option_that_cannot_act_on_a_cpu_says_so_once_and_changes_nothing(option, message, tmp_path, capsys, plain):
    outcome = trainer(tmp_path, speed={option: True}).fit()
    assert outcome.steps_run == 15
    assert capsys.readouterr().out.count(message) == 1
    assert losses(tmp_path) == plain


def test_channels_last_trains_the_same_numbers(tmp_path, plain):
    trainer(tmp_path, speed={"channels_last": True}).fit()
    assert [loss for _, loss in losses(tmp_path)] == pytest.approx([loss for _, loss in plain], rel=1e-5)


def test_channels_last_puts_convolution_weights_in_that_layout():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    cfg = TrainConfig.model_validate({"speed": {"channels_last": True}}).speed
    speed_options.prepare_model(model, [model], cfg, torch.device("cpu"), print)
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in model if isinstance(m, torch.nn.Conv2d))
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 4, 4, 4)


def test_a_compiler_that_fails_falls_back_with_one_message(tmp_path, capsys, monkeypatch, plain):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(speed_options.torch, "compile", no_compiler)
    outcome = trainer(tmp_path, speed={"compile": True}).fit()
    out = capsys.readouterr().out
    assert out.count("train.speed.compile: torch.compile is unavailable here (RuntimeError: no working C++ compiler "
                     "found); training runs uncompiled") == 1
    assert outcome.steps_run == 15 and losses(tmp_path) == plain


def test_the_text_to_image_task_compiles_its_unet():
    from trainflow.tasks.text_to_image_training import DiffusionModel, TextToImageTask

    unet = torch.nn.Linear(2, 2)
    assert TextToImageTask.compile_targets(None, DiffusionModel(unet, None)) == [unet]


def ema_shadow(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "ema.safetensors"))


@pytest.mark.parametrize("ema", [{"decay": 0.9, "update_every": 3}, {"decay": 0.9, "update_every": 2, "on_cpu": True}])
def test_ema_every_n_steps_resumes_exactly_and_is_what_is_exported(ema, tmp_path):
    full = tmp_path / "full"
    keep = {"every_n_steps": 2, "keep_top_k": 20, "total_limit": 20}
    done = trainer(full, ema=ema, checkpoints=keep)
    done.fit()
    state = json.loads((full / "step-000000015" / "state.json").read_text())
    assert state["ema"]["optimization_step"] == 15 // ema["update_every"]  # one update per N optimizer steps
    # The same run cut back to its checkpoints up to step 6 and resumed mid-cycle: the same losses and average.
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    for later in resumed.glob("step-*"):
        if int(later.name.removeprefix("step-")) > 6:
            shutil.rmtree(later)
    again = trainer(resumed, ema=ema, checkpoints=keep)
    outcome = again.fit()
    assert outcome.resumed_from == max(p.name for p in full.glob("step-*") if int(p.name[5:]) <= 6)  # step 5 (kept: validated)
    assert losses(resumed) == losses(full)
    for name, value in ema_shadow(full / "step-000000015").items():
        assert torch.equal(value, ema_shadow(resumed / "step-000000015")[name])
    # The exported (best) model holds the EMA weights, not the raw ones.
    best = again.store.best().path
    exported = [p.detach().clone() for p in again.load_best_into_model().parameters() if p.requires_grad]
    shadow = ema_shadow(best)
    assert all(torch.equal(param, shadow[str(i)]) for i, param in enumerate(exported))
