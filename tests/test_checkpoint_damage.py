"""Damaged checkpoint folders: every class of damage falls back to the previous checkpoint with one warning line.

A run is trained once (6 steps, a checkpoint every 2); each test copies it, damages
the newest checkpoint (step 6) in one way, and trains again with the same settings.
Some damage is done as a careful tamperer would, recomputing manifest.json, so that
the failure must come from reading or applying the files, not from a checksum.
When no checkpoint is usable, training stops with one sentence and touches nothing.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))

from engine_tasks import WineTask  # noqa: E402
from trainflow.config import TrainConfig  # noqa: E402
from trainflow.errors import UserFacingError  # noqa: E402
from trainflow.training.checkpoints import MANIFEST_FILE, CheckpointStore, CheckpointUnusable, seal  # noqa: E402
from trainflow.training.engine import Trainer, TrainingOutcome  # noqa: E402
from trainflow.training.run_identity import RunIdentity  # noqa: E402
from trainflow.training.training_log import read_step_log  # noqa: E402

SETTINGS = {
    "max_steps": 6, "batch_size": 8, "device": "cpu", "deterministic": True,
    "optimizer": {"name": "adamw", "learning_rate": 0.01}, "schedule": {"name": "cosine", "warmup_steps": 2},
    "validation": {"every_n_steps": 2, "every_epoch": True}, "ema": {"decay": 0.9},
    "early_stopping": {"monitor": "val_loss", "patience": None},
    "checkpoints": {"every_n_steps": 2, "keep_top_k": 3, "total_limit": 4}, "logging": {"tensorboard": False},
}
NEWEST, PREVIOUS = "step-000000006", "step-000000004"


def train(folder: Path) -> TrainingOutcome:
    cfg = TrainConfig.model_validate(SETTINGS)
    identity = RunIdentity.build("classification", 0, {}, cfg.model_dump(mode="json"), "wine")
    return Trainer(WineTask(), cfg, folder, 0, identity).fit()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pristine") / "run"
    train(folder)
    assert sorted(p.name for p in folder.glob("step-*")) == ["step-000000002", PREVIOUS, NEWEST]
    return folder


# ------------------------------------------------------------------ ways to damage a checkpoint folder
def reseal(folder: Path) -> None:
    """Recompute manifest.json, as someone who edits a checkpoint and covers their tracks would."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    seal(folder, manifest["step"], manifest["metric"])


def edit_json(path: Path, change) -> None:
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))


def edit_tensors(path: Path, change) -> None:
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def first(tensors: dict) -> str:
    return sorted(tensors)[0]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "state.json truncated": lambda f: _truncate(f / "state.json"),
    "state.json step count edited": lambda f: edit_json(f / "state.json", lambda s: s.update(step=5)),
    "state.json step count edited, manifest resealed": lambda f: (
        edit_json(f / "state.json", lambda s: s.update(step=5)), reseal(f)),
    "state.json a JSON list, manifest resealed": lambda f: ((f / "state.json").write_text("[]"), reseal(f)),
    "state.json without its early-stopping state, manifest resealed": lambda f: (
        edit_json(f / "state.json", lambda s: s.pop("early_stopping")), reseal(f)),
    "state.json not UTF-8, manifest resealed": lambda f: ((f / "state.json").write_bytes(b"\xff\xfe{"), reseal(f)),
    "model.safetensors with an invalid header, manifest resealed": lambda f: (
        (f / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header!}"), reseal(f)),
    "model.safetensors emptied, manifest resealed": lambda f: ((f / "model.safetensors").write_bytes(b""), reseal(f)),
    "rng.safetensors holding bytes that are not an RNG state, manifest resealed": lambda f: (
        save_file({"rank0": torch.tensor([1, 2, 3], dtype=torch.uint8)}, str(f / "rng.safetensors")), reseal(f)),
    "optimizer.safetensors missing": lambda f: (f / "optimizer.safetensors").unlink(),
    "manifest.json missing": lambda f: (f / MANIFEST_FILE).unlink(),
    "manifest.json truncated": lambda f: _truncate(f / MANIFEST_FILE),
    "manifest.json metric edited": lambda f: edit_json(f / MANIFEST_FILE, lambda m: m.update(metric=0.0)),
    "an extra file": lambda f: (f / "notes.txt").write_text("hello"),
    "a model tensor in float64, manifest resealed": lambda f: (
        edit_tensors(f / "model.safetensors", lambda t: t.update({first(t): t[first(t)].double()})), reseal(f)),
    "a model tensor of another shape, manifest resealed": lambda f: (
        edit_tensors(f / "model.safetensors", lambda t: t.update({first(t): t[first(t)][:1].clone()})), reseal(f)),
    "a model tensor renamed, manifest resealed": lambda f: (
        edit_tensors(f / "model.safetensors", lambda t: t.update({"stranger": t.pop(first(t))})), reseal(f)),
    "an optimizer tensor of another shape, manifest resealed": lambda f: (
        edit_tensors(f / "optimizer.safetensors",
                     lambda t: t.update({k: t[k].flatten()[:2].clone() for k in t if t[k].dim() > 1})), reseal(f)),
    "an EMA tensor missing, manifest resealed": lambda f: (
        edit_tensors(f / "ema.safetensors", lambda t: t.pop(first(t))), reseal(f)),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_to_the_newest_checkpoint_falls_back_to_the_previous_with_one_line(pristine, tmp_path, capsys, damage):
    folder = tmp_path / "run"
    shutil.copytree(pristine, folder)
    DAMAGE[damage](folder / NEWEST)
    capsys.readouterr()

    outcome = train(folder)
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1, captured.err
    assert warnings[0].startswith(f"train: warning: skipping checkpoint {NEWEST}: ")
    assert warnings[0].endswith("; trying the previous one")
    assert "Traceback" not in captured.err + captured.out
    assert outcome.resumed_from == PREVIOUS and outcome.steps_run == 6
    assert f"train: resuming from checkpoint {PREVIOUS} (step 4" in captured.out
    # The resumed run is the same run: every step's loss, bit for bit, and a new step-6 checkpoint that verifies.
    assert [(r["step"], r["loss"]) for r in read_step_log(folder)] == [(r["step"], r["loss"]) for r in read_step_log(pristine)]
    assert CheckpointStore(folder, True, 3, 4).load(folder / NEWEST).state["step"] == 6


def test_when_no_checkpoint_is_usable_training_stops_with_one_sentence_and_deletes_nothing(pristine, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(pristine, folder)
    for checkpoint in folder.glob("step-*"):
        _truncate(checkpoint / "model.safetensors")
    before = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    capsys.readouterr()

    with pytest.raises(UserFacingError) as caught:
        train(folder)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"no usable checkpoint in {folder} (3 damaged, newest first: {NEWEST}: ")
    assert message.endswith("to start over")
    assert len([line for line in capsys.readouterr().err.splitlines() if "skipping checkpoint" in line]) == 3
    assert {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_checkpoint_of_another_run_is_still_refused_rather_than_skipped(pristine, tmp_path):
    """Damage falls back; a healthy checkpoint of different settings is a user error naming the field."""
    folder = tmp_path / "run"
    shutil.copytree(pristine, folder)
    cfg = TrainConfig.model_validate({**SETTINGS, "optimizer": {"name": "adamw", "learning_rate": 0.02}})
    identity = RunIdentity.build("classification", 0, {}, cfg.model_dump(mode="json"), "wine")
    with pytest.raises(UserFacingError, match="train.optimizer.learning_rate is 0.01 in the checkpoint, 0.02 now"):
        Trainer(WineTask(), cfg, folder, 0, identity).fit()


@pytest.mark.parametrize("edit", [lambda text: text + "\t", lambda text: text.replace("\n", "\r\n", 1),
                                  lambda text: text.replace(" ", "", 1)], ids=["tab appended", "crlf", "space removed"])
def test_a_manifest_edited_only_in_whitespace_is_caught(pristine, tmp_path, edit):
    """Found by the property below: the same JSON content in other bytes still means someone edited the file."""
    folder = tmp_path / "probe"
    shutil.copytree(pristine / NEWEST, folder)
    manifest = folder / "manifest.json"
    manifest.write_bytes(edit(manifest.read_text(encoding="utf-8")).encode("utf-8"))
    with pytest.raises(CheckpointUnusable, match="not byte for byte what trainflow wrote"):
        CheckpointStore(tmp_path, True, 3, 4).load(folder)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_change_to_any_file_of_a_checkpoint_is_caught_when_it_is_read(pristine, tmp_path, data):
    """Property: cut, overwrite or extend any file at any place; loading raises CheckpointUnusable, nothing else."""
    folder = tmp_path / "probe"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(pristine / NEWEST, folder)
    victim = data.draw(st.sampled_from(sorted(p.name for p in folder.iterdir())), label="file")
    content = (folder / victim).read_bytes()
    where = data.draw(st.integers(0, len(content)), label="offset")
    how = data.draw(st.sampled_from(["truncate", "overwrite", "append"]), label="how")
    junk = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
    if how == "truncate":
        changed = content[:where]
    elif how == "overwrite":
        changed = content[:where] + junk + content[where + len(junk):]
    else:
        changed = content + junk
    if changed == content:
        return
    (folder / victim).write_bytes(changed)
    with pytest.raises(CheckpointUnusable):
        CheckpointStore(tmp_path, True, 3, 4).load(folder)
