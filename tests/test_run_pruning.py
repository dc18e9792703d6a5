"""`trainflow prune-runs`: which workspace run folders go, which stay, and what is never touched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainflow.cli import main
from trainflow.errors import UserFacingError
from trainflow.commands.prune_runs import SECONDS_PER_DAY, plan_pruning, prune_runs

NOW = 1_800_000_000.0


def make_run(runs: Path, name: str, days_old: float, size: int = 1000, fresh_file_days: float | None = None) -> Path:
    """A run folder as the pipeline leaves it: train/checkpoints/step-*/ and preflight/, all files `days_old` old."""
    step = runs / name / "train" / "checkpoints" / "step-000000010"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"x" * size)
    (runs / name / "preflight").mkdir()
    stamp = NOW - days_old * SECONDS_PER_DAY
    for root, dirs, files in os.walk(runs / name):
        for entry in [root, *(os.path.join(root, f) for f in files)]:
            os.utime(entry, (stamp, stamp))
    if fresh_file_days is not None:  # a run that is still writing: one recent file deep inside
        recent = step / "state.json"
        recent.write_text("{}")
        os.utime(recent, (NOW - fresh_file_days * SECONDS_PER_DAY,) * 2)
    return runs / name


@pytest.fixture
def runs(tmp_path) -> Path:
    folder = tmp_path / "runs"
    folder.mkdir()
    for index, age in enumerate([1, 5, 20, 30, 40]):
        make_run(folder, f"run-{index}", age)
    make_run(folder, "old-but-active", 60, fresh_file_days=0.1)
    (folder / "someone-elses").mkdir()  # not ours: no task folder with our files
    (folder / "someone-elses" / "notes.txt").write_text("keep me")
    os.utime(folder / "someone-elses", (NOW - 90 * SECONDS_PER_DAY,) * 2)
    return folder


def test_keeps_newest_and_recent_removes_the_rest_and_never_a_running_one(runs, capsys):
    result = prune_runs(runs, keep_last=2, keep_days=14, now=NOW)
    assert sorted(r.path.name for r in result.removed) == ["run-2", "run-3", "run-4"]
    assert sorted(r.path.name for r in result.kept) == ["old-but-active", "run-0", "run-1"]
    assert sorted(p.name for p in runs.iterdir()) == ["old-but-active", "run-0", "run-1", "someone-elses"]
    assert (runs / "someone-elses" / "notes.txt").read_text() == "keep me"
    out = capsys.readouterr().out
    assert "removed 3 of 6 run folders (2.9 KB)" in out and f"removed {runs / 'run-4'} (1000 B, last written 40.0 days ago)" in out


def test_keep_last_protects_even_old_runs_and_dry_run_changes_nothing(runs, capsys):
    before = sorted(p.name for p in runs.iterdir())
    plan = prune_runs(runs, keep_last=4, keep_days=0, dry_run=True, verbose=True, now=NOW)
    assert sorted(r.path.name for r in plan.removed) == ["run-3", "run-4"]  # the 4 newest: active, run-0, -1, -2
    assert sorted(p.name for p in runs.iterdir()) == before
    out = capsys.readouterr().out
    assert "would remove 2 of 6" in out and "left alone" in out and "someone-elses" in out


def test_no_hidden_leftovers_after_removal(runs):
    prune_runs(runs, keep_last=0, keep_days=0, now=NOW)
    assert sorted(p.name for p in runs.iterdir()) == ["someone-elses"]


def test_plan_alone_changes_nothing(runs):
    plan = plan_pruning(runs, keep_last=0, keep_days=0, now=NOW)
    assert len(plan.removed) == 6 and all(r.path.is_dir() for r in plan.removed)


@pytest.mark.parametrize("args,message", [
    (["{missing}"], "is not a folder"),
    (["{runs}", "--keep-last", "-1"], "must be 0 or more"),
])
def test_bad_input_is_one_sentence_and_exit_2(runs, tmp_path, capsys, args, message):
    filled = [a.format(missing=tmp_path / "nope", runs=runs) for a in args]
    assert main(["prune-runs", *filled]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_defaults_keep_recent_runs(runs, capsys):
    for run in runs.iterdir():  # everything written just now (real clock): the 14-day default keeps all
        os.utime(run, None)
        for root, _, files in os.walk(run):
            for name in files:
                os.utime(os.path.join(root, name), None)
    assert main(["prune-runs", str(runs)]) == 0
    assert len(list(runs.iterdir())) == 7 and "removed 0 of 6" in capsys.readouterr().out


def test_a_folder_that_cannot_be_removed_is_one_sentence(runs, capsys, monkeypatch):
    import shutil as shutil_module

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(shutil_module, "rmtree", refuse)
    with pytest.raises(UserFacingError, match=r"cannot remove .*run-\d \(Permission denied\).*\.removing"):
        prune_runs(runs, keep_last=2, keep_days=14, now=NOW)
