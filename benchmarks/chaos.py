"""`make chaos`: kill pipeline stages at random points, fill the disk during a checkpoint write and stop the MLflow
server during registration; every run must end exactly as an uninterrupted one does.

Faults (seeded by --seed; each on a fresh state folder, against that pipeline's uninterrupted run):
  kill    `trainflow run` runs in its own process group; at a random moment (every other kill within the span the
          uninterrupted run spent in its train stage, the rest anywhere in it) the whole group gets SIGKILL (a node lost) or SIGTERM (a pod preempted: the training engine
          checkpoints within its grace budget; whatever still runs after 60 s gets SIGKILL). The same command
          then runs again in the same state folder, as a retry would, and resumes from the checkpoints there.
  disk    the train stage's 3rd checkpoint write fails with ENOSPC, injected at the write layer inside the stage's
          own process (a sitecustomize module in a folder only this campaign puts on PYTHONPATH replaces the
          safetensors writer the checkpoint store uses). The run must fail with one line naming the folder, the
          previous checkpoint must verify, no half-written folder may remain; then a re-run completes.
  mlflow  the registry is an `mlflow server`, stopped as the register stage starts and started again 15 s later;
          the MLflow client's and the stage's retries must end in one clean registration.
Survived: the run (after its re-run) ends with the same final weights (sha256 of every .safetensors file of the
model artifact) and the same registered result (gate outcome and test metrics) as the uninterrupted run.
lost_steps: training steps the interrupted attempt had logged that the re-run did again (the log's
granularity: validation every 5 steps). Last line:
    chaos: survived=N/M lost_steps_max=K
--smoke: one kill of the regression pipeline (plus its uninterrupted run).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TERM_GRACE_SECONDS = 60
MLFLOW_OUTAGE_SECONDS = 15
ENOSPC_AT_CHECKPOINT = 3

# Runs inside every process of the disk fault's pipeline (on PYTHONPATH as sitecustomize); acts only in the one
# that imports the checkpoint store (the train stage).
ENOSPC_INJECTION = '''
import errno, importlib.abc, importlib.util, os, sys

class _FullDiskOnCheckpoint(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "trainflow.training.checkpoints":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            original_save, original_write, saves = module.CheckpointStore.save, module.save_file, [0]

            def counting_save(self, *args, **kwargs):
                saves[0] += 1
                return original_save(self, *args, **kwargs)

            def filling_write(tensors, filename, *args, **kwargs):
                if saves[0] == int(os.environ["CHAOS_ENOSPC_AT"]):
                    with open(filename, "wb") as handle:
                        handle.write(b"\\0" * 4096)  # the disk fills part-way through the file
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
                return original_write(tensors, filename, *args, **kwargs)

            module.CheckpointStore.save, module.save_file = counting_save, filling_write

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _FullDiskOnCheckpoint())
'''


@dataclass
class Outcome:
    """What a finished pipeline run left: its final weights' digest and its registered result."""

    weights: str | None
    result: dict | None


@dataclass
class Fault:
    pipeline: str
    kind: str  # SIGKILL, SIGTERM, ENOSPC, mlflow-stop
    at_seconds: float | None = None
    first_exit: int | None = None
    final_exit: int | None = None
    same_weights: bool = False
    same_result: bool = False
    lost_steps: int = 0
    note: str = ""
    extra_ok: bool = True  # the fault's own check (disk: one line, previous checkpoint intact; mlflow: retried)

    @property
    def survived(self) -> bool:
        return self.final_exit == 0 and self.same_weights and self.same_result and self.extra_ok


@dataclass
class Run:
    exit_code: int
    seconds: float
    lines: list[str] = field(default_factory=list)
    train_span: tuple[float, float] | None = None  # seconds after the start when the train stage began and ended


def pipeline_config(name: str, work: Path, tracking_uri: str) -> Path:
    """The run YAML of pipeline `name` ("regression" or "demo") with its registry at `tracking_uri`."""
    if name == "regression":
        config = {
            "run_name": "chaos-diabetes", "task": "regression", "seed": 0,
            "ingest": {"sklearn_dataset": "diabetes", "split": {"train": 0.7, "val": 0.15, "test": 0.15}},
            "model": {"architecture": "mlp", "hidden_sizes": [16], "dropout": 0.1},
            "train": {"max_epochs": 12, "batch_size": 32,
                      "optimizer": {"name": "adamw", "learning_rate": 3.0e-3, "weight_decay": 5.0e-2},
                      "validation": {"every_n_steps": 5}, "checkpoints": {"every_n_steps": 5, "keep_top_k": 1,
                                                                          "total_limit": 2},
                      "logging": {"tensorboard": False}},
            "evaluate": {"bootstrap_resamples": 0},
            "register": {"model_name": "chaos-diabetes", "experiment": "chaos", "gates": [{"metric": "r2", "min": 0.0}]},
        }
    else:
        config = yaml.safe_load((ROOT / "pipelines" / "configs" / "demo.yaml").read_text())
        for section, key in (("ingest", "dataset_dir"), ("model", "base")):
            config[section][key] = str(ROOT / config[section][key])
    config.setdefault("register", {})["tracking_uri"] = tracking_uri
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def environment(extra_path: Path | None = None) -> dict[str, str]:
    paths = [str(ROOT / "shared"), str(ROOT)] + ([str(extra_path)] if extra_path else [])
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([old] if old else [])), "PYTHONUNBUFFERED": "1"}


def run_pipeline(config: Path, state: Path, env: dict[str, str], kill: tuple[float, int] | None = None,
                 on_line=None) -> Run:
    """`trainflow run --verbose` to its end, or until `kill` = (after seconds, signal) hits its process group."""
    command = [sys.executable, "-m", "trainflow", "run", "--config", str(config), "--state-dir", str(state),
               "--summary-json", str(state / "summary.json"), "--verbose"]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=ROOT, start_new_session=True)
    lines: list[str] = []
    train: list[float] = []

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            plain = ANSI.sub("", line)
            if "Executing task 'train'" in plain or "Task 'train' finished" in plain:
                train.append(time.monotonic() - started)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if kill is not None:
        delay, signum = kill
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signum)
            if signum == signal.SIGTERM:
                try:
                    process.wait(timeout=TERM_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # a stage the parent left behind dies with its "pod"
    code = process.wait()
    reader.join(timeout=30)
    state.parent.mkdir(parents=True, exist_ok=True)
    with open(state.with_name(state.name + ".log"), "a", encoding="utf-8") as log:  # kept beside the state to diagnose
        log.write("\n".join(lines + [f"exit {code}", ""]))
    return Run(code, time.monotonic() - started, lines, (train[0], train[1]) if len(train) == 2 else None)


def outcome(state: Path) -> Outcome:
    """The final weights' digest and the registered result of the run whose summary is in `state`."""
    summary_path = state / "summary.json"
    if not summary_path.is_file():
        return Outcome(None, None)
    summary = json.loads(summary_path.read_text())
    model = Path(summary["artifacts"]["model"])
    digest = hashlib.sha256()
    for path in sorted(model.rglob("*.safetensors")):
        digest.update(path.relative_to(model).as_posix().encode() + path.read_bytes())
    registration = summary["registration"]
    result = {"registered": registration.get("registered"), "reasons": registration.get("reasons"),
              "metrics": summary.get("metrics")}
    return Outcome(digest.hexdigest(), result)


ANSI = re.compile(r"\x1b\[[0-9;]*m")
STEP_LINE = re.compile(r"train: step (\d+) ")
RESUMED_LINE = re.compile(r"train: resuming from checkpoint step-(\d+)")


def lost_steps(killed: Run, rerun: Run) -> int:
    done = [int(m.group(1)) for line in killed.lines if (m := STEP_LINE.search(line))]
    resumed = [int(m.group(1)) for line in rerun.lines if (m := RESUMED_LINE.search(line))]
    if not done:
        return 0
    return max(0, max(done) - (resumed[0] if resumed else 0))


def compare(fault: Fault, state: Path, baseline: Outcome) -> None:
    found = outcome(state)
    fault.same_weights = found.weights is not None and found.weights == baseline.weights
    fault.same_result = found.result is not None and found.result == baseline.result


def kill_fault(pipeline: str, config: Path, work: Path, baseline: tuple[Outcome, Run], rng: random.Random,
               index: int, env: dict[str, str]) -> Fault:
    signum = rng.choice((signal.SIGKILL, signal.SIGTERM))
    span = baseline[1].train_span if index % 2 == 0 and baseline[1].train_span else (0.05 * baseline[1].seconds,
                                                                                     0.95 * baseline[1].seconds)
    delay = round(rng.uniform(*span), 1)
    state = work / f"{pipeline}-kill-{index}"
    fault = Fault(pipeline, signal.Signals(signum).name, delay)
    first = run_pipeline(config, state, env, kill=(delay, signum))
    fault.first_exit = first.exit_code
    rerun = run_pipeline(config, state, env)
    fault.final_exit, fault.lost_steps = rerun.exit_code, lost_steps(first, rerun)
    compare(fault, state, baseline[0])
    resumed = [line.strip() for line in rerun.lines if RESUMED_LINE.search(line)]
    fault.note = resumed[0][:70] if resumed else ("finished before the kill" if first.exit_code == 0 else "no checkpoint yet")
    return fault


def disk_fault(config: Path, work: Path, baseline: Outcome, env: dict[str, str]) -> Fault:
    from trainflow.training.checkpoints import CheckpointStore

    injection = work / "enospc-injection"
    injection.mkdir(exist_ok=True)
    (injection / "sitecustomize.py").write_text(ENOSPC_INJECTION)
    state = work / "regression-disk-full"
    fault = Fault("regression", "ENOSPC")
    first = run_pipeline(config, state, {**environment(injection), "CHAOS_ENOSPC_AT": str(ENOSPC_AT_CHECKPOINT)})
    fault.first_exit = first.exit_code
    errors = [line for line in first.lines if "no space left on the device" in line and "trainflow:" in line]
    folders = [p for p in (state / "checkpoints").rglob("*") if p.is_dir() and p.parent.name == "chaos-diabetes"]
    store = CheckpointStore(folders[0].parent, True, 1, 2) if folders else None
    intact = store is not None and any(_verifies(store, r.path) for r in store.records())
    half_written = [p.name for p in folders if p.name.startswith(".")]
    fault.extra_ok = first.exit_code == 2 and bool(errors) and intact and not half_written
    fault.note = (errors[0].split("failed: ", 1)[-1][:70] if errors else "no disk-full message") + \
        ("" if intact else "; previous checkpoint NOT intact") + (f"; left {half_written}" if half_written else "")
    rerun = run_pipeline(config, state, env)
    fault.final_exit = rerun.exit_code
    compare(fault, state, baseline)
    return fault


def _verifies(store, path: Path) -> bool:
    try:
        store.load(path)
        return True
    except Exception:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """An `mlflow server` on a sqlite store in `folder`, which can be stopped and started again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.process = folder, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                   "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True, cwd=self.folder)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start within 120 s")

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


def mlflow_fault(work: Path, baseline: Outcome, env: dict[str, str]) -> Fault:
    folder = work / "mlflow-server"
    folder.mkdir(exist_ok=True)
    server = MlflowServer(folder)
    server.start()
    config = pipeline_config("regression", work / "mlflow-server", server.uri)
    fault, events = Fault("regression", "mlflow-stop"), []

    def outage() -> None:
        time.sleep(1.0)
        server.stop()
        events.append(time.monotonic())
        time.sleep(MLFLOW_OUTAGE_SECONDS)
        server.start()
        events.append(time.monotonic())

    def watch(line: str) -> None:
        plain = ANSI.sub("", line)
        if "Executing task" in plain and "register" in plain and not events:
            events.append(0.0)
            threading.Thread(target=outage, daemon=True).start()
        if "register" in plain and ("finished" in plain or "failed" in plain):
            ended.append(time.monotonic())

    ended: list[float] = []
    try:
        run = run_pipeline(config, work / "regression-mlflow-stop", env, on_line=watch)
    finally:
        server.stop()
    # Two layers may ride the outage out: the stage's own tries ("trying again in") and the pipeline's retry of a
    # stage that exited 3 ("attempt 2 of"); MLflow's HTTP client also retries requests after the first answer.
    retries = [line for line in run.lines if "trying again in" in line or "attempt 2 of" in line]
    fault.first_exit = fault.final_exit = run.exit_code
    overlapped = len(events) >= 2 and bool(ended) and ended[-1] > events[1]
    fault.extra_ok = overlapped
    if overlapped:
        fault.note = f"server down {MLFLOW_OUTAGE_SECONDS} s while registering; {len(retries)} retry lines"
    elif events:
        fault.note = "the register stage ended before the server went down: the outage tested nothing"
    else:
        fault.note = "the register stage never started"
    compare(fault, work / "regression-mlflow-stop", baseline)
    return fault


TABLE_HEADER = (f"{'#':>2} {'pipeline':<10} {'fault':<11} {'at s':>6} {'1st exit':>8} {'final':>5} {'weights':>7} "
                f"{'result':>6} {'lost':>4}  survived  note")


def table_row(number: int, f: Fault) -> str:
    at = f"{f.at_seconds:.1f}" if f.at_seconds is not None else "-"
    return (f"{number:>2} {f.pipeline:<10} {f.kind:<11} {at:>6} {f.first_exit!s:>8} {f.final_exit!s:>5} "
            f"{'same' if f.same_weights else 'DIFF':>7} {'same' if f.same_result else 'DIFF':>6} {f.lost_steps:>4}  "
            f"{'yes' if f.survived else 'NO':<8}  {f.note}")


def print_table(faults: list[Fault]) -> None:
    print(TABLE_HEADER)
    for number, f in enumerate(faults, 1):
        print(table_row(number, f))
    injected: dict[str, list[int]] = {}
    for f in faults:
        counts = injected.setdefault(f.kind, [0, 0])
        counts[0] += 1
        counts[1] += f.survived
    print("faults injected vs survived: " + ", ".join(f"{kind} {s}/{n}" for kind, (n, s) in injected.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="picks each kill's signal and moment (default 0)")
    parser.add_argument("--kills", type=int, default=20, help="kills in all, shared by the pipelines (default 20)")
    parser.add_argument("--pipelines", default="regression,demo", help="comma-separated: regression, demo")
    parser.add_argument("--smoke", action="store_true", help="one kill of the regression pipeline, nothing else")
    parser.add_argument("--work-dir", help="keep every run's state here (default: a temporary folder)")
    args = parser.parse_args(argv)
    pipelines = ["regression"] if args.smoke else [p.strip() for p in args.pipelines.split(",") if p.strip()]
    kills = 1 if args.smoke else args.kills
    if kills < 0 or not set(pipelines) <= {"regression", "demo"} or not pipelines:
        parser.error("--kills must be 0 or more and --pipelines name regression and/or demo")
    if "demo" in pipelines and not (ROOT / ".trainflow" / "demo" / "tiny-sd-base").is_dir():
        subprocess.run([sys.executable, "-m", "trainflow", "demo-assets"], cwd=ROOT, env=environment(), check=True)
    rng, env = random.Random(args.seed), environment()
    with tempfile.TemporaryDirectory(prefix="chaos-") as temporary:
        work = Path(args.work_dir or temporary).resolve()
        work.mkdir(parents=True, exist_ok=True)
        baselines, configs, faults = {}, {}, []
        for pipeline in pipelines:
            configs[pipeline] = pipeline_config(pipeline, work, f"sqlite:///{work / 'mlflow.db'}")
            run = run_pipeline(configs[pipeline], work / f"{pipeline}-uninterrupted", env)
            if run.exit_code != 0:
                print("\n".join(run.lines[-20:]), file=sys.stderr)
                print(f"chaos: the uninterrupted {pipeline} run failed (exit {run.exit_code})", file=sys.stderr)
                return 1
            baselines[pipeline] = (outcome(work / f"{pipeline}-uninterrupted"), run)
            span = f"; train stage {run.train_span[0]:.0f}-{run.train_span[1]:.0f} s" if run.train_span else ""
            print(f"chaos: uninterrupted {pipeline} run: {run.seconds:.0f} s{span}", flush=True)
        for index in range(kills):
            pipeline = pipelines[index % len(pipelines)]
            faults.append(kill_fault(pipeline, configs[pipeline], work, baselines[pipeline], rng, index, env))
            # A full campaign takes about an hour: each fault's row is printed as it ends, the whole table again at the end.
            print(f"chaos: fault done: {table_row(len(faults), faults[-1])}", flush=True)
        if not args.smoke:
            faults.append(disk_fault(configs["regression"], work, baselines["regression"][0], env) if "regression"
                          in pipelines else Fault("-", "ENOSPC", note="needs the regression pipeline"))
            faults.append(mlflow_fault(work, baselines["regression"][0], env) if "regression" in pipelines
                          else Fault("-", "mlflow-stop", note="needs the regression pipeline"))
    print_table(faults)
    survived = sum(f.survived for f in faults)
    print(f"chaos: survived={survived}/{len(faults)} lost_steps_max={max((f.lost_steps for f in faults), default=0)}")
    return 0 if survived == len(faults) else 1


if __name__ == "__main__":
    sys.exit(main())
