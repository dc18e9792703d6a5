"""Quiet local runs: one line per stage start and end, a failed stage's last lines and error, --verbose for all."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from trainflow.commands.local_run import StageReporter, one_line_error

CYAN, RESET = "\033[96m", "\033[0m"


def kfp_output(task: str, status: str, streamed: list[str]) -> str:
    """What kfp.local writes to stdout for one task: its records (timestamped, coloured) and the indented log."""
    records = [f"20:01:02.345 - INFO - Executing task {CYAN}'{task}'{RESET}", "20:01:02.346 - INFO - Streamed logs:", ""]
    records += [f"    {line}" for line in streamed] + ["    ", ""]
    level = "INFO" if status == "SUCCESS" else "ERROR"
    records += [f"20:01:09.000 - {level} - Task {CYAN}'{task}'{RESET} finished with status {status}",
                f"20:01:09.001 - INFO - Task '{task}' outputs:", "    dataset: Dataset( name='dataset',", "-" * 80]
    return "\n".join(records) + "\n"


def reporter(total: int = 2) -> tuple[StageReporter, io.StringIO]:
    shown = io.StringIO()
    return StageReporter(Console(file=shown, width=120, soft_wrap=True), total), shown


def test_each_stage_is_one_line_as_it_starts_and_one_as_it_ends():
    stages, shown = reporter()
    stages.write(kfp_output("ingest-split", "SUCCESS", ["ingest: 150 records", "{\"executor\": \"output\"}"]))
    # kfp.local writes in pieces (the indent, then the line); the reporter must join them.
    for piece in kfp_output("build-cache", "SUCCESS", ["cache: wrote supervised.h5"]).split("    "):
        stages.write(piece)
        stages.write("    ")
    lines = shown.getvalue().splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        "[1/2] ingest_split      started", "[1/2] ingest_split      succeeded",
        "[2/2] build_cache       started", "[2/2] build_cache       succeeded"]
    assert lines[1].endswith(" s") and stages.failure is None


def test_a_failed_stage_shows_its_last_lines_and_its_one_line_error():
    stages, shown = reporter(total=6)
    log = [f"train: step {n} (epoch {n / 10:.2f}/3)  val_loss 0.5" for n in range(1, 30)]
    log += ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "RuntimeError: CUDA error"]
    stages.write(kfp_output("train", "FAILURE", log))
    text = shown.getvalue()
    assert "[1/6] train             failed in" in text and "Last 20 log lines of train:" in text
    assert "  RuntimeError: CUDA error" in text and "step 12 " not in text and "step 13 " in text
    assert "INFO" not in text and "Streamed logs" not in text
    assert stages.failure == ("train", "RuntimeError: CUDA error")


class FlushRecorder(io.StringIO):
    """Remembers what had been written each time it was flushed."""

    def __init__(self):
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_each_stage_line_is_flushed_at_once_so_a_pipe_shows_progress():
    shown = FlushRecorder()
    stages = StageReporter(Console(file=shown, width=120, soft_wrap=True), 6)
    stages.write(kfp_output("train", "SUCCESS", ["train: step 1"]).split("Streamed logs")[0] + "\n")
    assert shown.flushed and shown.flushed[-1].endswith("[1/6] train             started\n")


def test_the_one_line_error_prefers_trainflows_user_error_line():
    lines = ["loading", "trainflow: ingest_split failed: table /d/t.csv has no column 'species'", "", "  "]
    assert one_line_error(lines) == "table /d/t.csv has no column 'species'"
    assert one_line_error(["a", "ValueError: bad", "During handling"]) == "ValueError: bad"
    assert one_line_error([]) == "no output (see --verbose)"


# ------------------------------------------------------------------ whole runs through kfp.local
def write_iris_config(tmp_path: Path, **ingest) -> Path:
    config = {
        "run_name": "iris-quiet", "task": "classification", "seed": 0,
        "ingest": ingest or {"sklearn_dataset": "iris"},
        "model": {"architecture": "mlp", "hidden_sizes": [16]},
        "train": {"max_epochs": 2, "batch_size": 16, "optimizer": {"learning_rate": 1.0e-2},
                  "logging": {"tensorboard": False}},
        "evaluate": {"bootstrap_resamples": 0},
        "register": {"model_name": "iris-quiet", "experiment": "tests",
                     "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "gates": []},
    }
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from trainflow.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_a_successful_run_prints_stage_lines_and_the_summary_only(tmp_path, capsys):
    code, out, err = run_cli(capsys, "run", "--config", str(write_iris_config(tmp_path)), "--state-dir",
                             str(tmp_path / "state"))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) <= 60, out
    for number, stage in enumerate(("preflight", "ingest_split", "build_cache", "train", "evaluate", "register_model"), 1):
        assert any(line.startswith(f"[{number}/6] {stage:<17} started") for line in lines), stage
        assert any(line.startswith(f"[{number}/6] {stage:<17} succeeded in ") for line in lines), stage
    assert "registered model iris-quiet version 1" in out
    for noise in ("Executing task", "Streamed logs", "executor_input", "INFO -"):
        assert noise not in out + err


@pytest.mark.slow
def test_a_failing_stage_prints_its_last_lines_and_one_error_and_verbose_shows_everything(tmp_path, capsys):
    table = tmp_path / "flowers.csv"
    table.write_text("petal_length,petal_width,kind\n1.4,0.2,setosa\n4.7,1.4,versicolor\n")
    config = write_iris_config(tmp_path, table=str(table), label_column="species")  # the column is 'kind'
    code, out, err = run_cli(capsys, "run", "--config", str(config), "--state-dir", str(tmp_path / "state"))
    assert code == 2
    assert "[2/6] ingest_split      failed in " in out and "Last " in out and "log lines of ingest_split:" in out
    assert f"trainflow: ingest_split failed: table {table} has no column 'species'" in out
    assert err.strip().startswith("trainflow: error: stage ingest_split failed: table ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    assert "build_cache" not in out and len(out.splitlines()) <= 30

    code, out, err = run_cli(capsys, "run", "--config", str(config), "--state-dir", str(tmp_path / "state"), "--verbose")
    assert code == 2
    assert "Executing task" in out and "Streamed logs" in out and "has no column 'species'" in out


def test_a_warning_line_in_a_stage_log_is_shown_even_when_quiet():
    stages, shown = reporter()
    stages.write(kfp_output("train", "SUCCESS", [
        "train: step 1", "train: warning: skipping checkpoint step-000000006: state.json does not match its checksum "
        "(truncated, edited or damaged); trying the previous one", "train: resuming from checkpoint step-000000004"]))
    lines = shown.getvalue().splitlines()
    assert lines[1] == ("  train: warning: skipping checkpoint step-000000006: state.json does not match its checksum "
                        "(truncated, edited or damaged); trying the previous one")
    assert not any("resuming" in line or "step 1" in line for line in lines)
