"""The fault campaign (`make chaos`, benchmarks/chaos.py): a full disk during a checkpoint write is one sentence and
keeps the previous checkpoint; the campaign's ENOSPC injection reaches the checkpoint store in a fresh process;
the smoke campaign kills a real regression run and its re-run ends as an uninterrupted one."""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainflow.errors import UserFacingError
from trainflow.training import checkpoints
from trainflow.training.checkpoints import CheckpointStore

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import chaos  # noqa: E402


def save(store: CheckpointStore, step: int) -> None:
    store.save(step, {"model": {"w": torch.full((4,), float(step))}}, {"note": "x"}, metric=float(step))


def test_a_full_disk_during_a_checkpoint_write_is_one_sentence_and_keeps_the_previous_one(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "ckpt", lower_is_better=True, keep_top_k=1, total_limit=3)
    save(store, 5)
    written = checkpoints.save_file

    def full_disk(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(checkpoints, "save_file", full_disk)
    with pytest.raises(UserFacingError) as caught:
        save(store, 10)
    message = str(caught.value)
    assert message.startswith(f"no space left on the device holding {tmp_path / 'ckpt'} while writing checkpoint "
                              "step-000000010; the previous checkpoint (step-000000005) is intact")
    assert "\n" not in message
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-000000005"], "no half-written folder"
    assert store.load(tmp_path / "ckpt" / "step-000000005").tensors["model"]["w"].tolist() == [5.0] * 4
    monkeypatch.setattr(checkpoints, "save_file", written)


def test_other_write_failures_keep_their_own_error(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "ckpt", lower_is_better=True, keep_top_k=1, total_limit=3)

    def broken(*_args, **_kwargs):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(checkpoints, "save_file", broken)
    with pytest.raises(OSError, match="I/O error"):
        save(store, 1)


def test_the_campaigns_enospc_injection_reaches_the_checkpoint_store_of_a_fresh_process(tmp_path):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(chaos.ENOSPC_INJECTION)
    program = (
        "import torch\n"
        "from trainflow.errors import UserFacingError\n"
        "from trainflow.training.checkpoints import CheckpointStore\n"
        f"store = CheckpointStore({str(tmp_path / 'ckpt')!r}, True, 1, 5)\n"
        "for step in (1, 2, 3):\n"
        "    try:\n"
        "        store.save(step, {'model': {'w': torch.zeros(2)}}, {}, None)\n"
        "    except UserFacingError as error:\n"
        "        print('refused', step, error)\n"
    )
    env = chaos.environment(tmp_path / "inject")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                            env={**env, "CHAOS_ENOSPC_AT": "3"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused 3 no space left on the device holding ")
    assert "previous checkpoint (step-000000002) is intact" in result.stdout


def test_lost_steps_are_the_logged_steps_the_rerun_did_again():
    killed = chaos.Run(-9, 1.0, ["    train: step 5 (epoch 0.5/2)  val_loss 1", "    train: step 10 (epoch 1.00/2)  x"])
    rerun = chaos.Run(0, 1.0, ["    train: resuming from checkpoint step-000000005 (step 5, epoch 1, 160 records in)"])
    assert chaos.lost_steps(killed, rerun) == 5
    assert chaos.lost_steps(killed, chaos.Run(0, 1.0, [])) == 10
    assert chaos.lost_steps(chaos.Run(-9, 1.0, ["ingest"]), rerun) == 0


@pytest.mark.slow
@pytest.mark.extended
def test_the_smoke_campaign_kills_a_regression_run_and_its_rerun_ends_as_the_uninterrupted_one(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "chaos.py"), "--smoke", "--seed", "3",
                             "--work-dir", str(tmp_path)], capture_output=True, text=True, timeout=1200,
                            env=chaos.environment())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.fullmatch(r"chaos: survived=1/1 lost_steps_max=\d+", result.stdout.strip().splitlines()[-1])
