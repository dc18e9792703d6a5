"""The step log survives being read while written and being cut by a kill mid-line."""

from __future__ import annotations

import json

from trainflow.config.training import LoggingConfig
from trainflow.training.training_log import STEP_LOG, TrainingLog, read_step_log


def _records(steps):
    return [{"step": step, "loss": 1.0 / step} for step in steps]


def test_a_line_still_being_written_is_not_read(tmp_path):
    whole = "".join(json.dumps(r) + "\n" for r in _records([1, 2, 3]))
    (tmp_path / STEP_LOG).write_text(whole + '{"step": 4, "loss": 0.2', encoding="utf-8")
    assert [r["step"] for r in read_step_log(tmp_path)] == [1, 2, 3]


def test_resume_drops_a_torn_line_and_later_steps_then_appends_cleanly(tmp_path):
    whole = "".join(json.dumps(r) + "\n" for r in _records([1, 2, 3, 4]))
    (tmp_path / STEP_LOG).write_text(whole + '{"step": 5, "lo', encoding="utf-8")
    log = TrainingLog(LoggingConfig(tensorboard=False), tmp_path, None, enabled=True)
    log.truncate_after(3)
    log.step({"step": 4, "loss": 0.5})
    assert [(r["step"], r["loss"]) for r in read_step_log(tmp_path)] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.5)]
    assert (tmp_path / STEP_LOG).read_text(encoding="utf-8").endswith("\n")


def test_a_torn_line_in_the_middle_is_skipped_not_a_crash(tmp_path):
    lines = [json.dumps(r) for r in _records([1, 2])]
    (tmp_path / STEP_LOG).write_text(lines[0] + "\n" + '{"step": 9, "lo' + "\n" + lines[1] + "\n", encoding="utf-8")
    assert [r["step"] for r in read_step_log(tmp_path)] == [1, 2]
