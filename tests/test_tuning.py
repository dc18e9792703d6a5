"""trainflow tune: search-space checks, pruning, resume after SIGKILL, parallel workers, and the untouched test split."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from tuning_fixtures import study_trials, tuning_config, tuning_payload  # noqa: E402
from trainflow.config import RunConfig, parse_section  # noqa: E402
from trainflow.errors import ConfigError  # noqa: E402

WORKER = [sys.executable, "-m", "trainflow.experiments.trial_worker"]


def config_error(params: dict, **tune) -> str:
    payload = tuning_payload()
    payload["tune"] = {**payload["tune"], "params": params, **tune}
    with pytest.raises(ConfigError) as caught:
        parse_section(RunConfig, payload, "c.yaml")
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("params, tune, named", [
    ({"train.optimizer.learnin_rate": {"float": [1e-4, 1e-2]}}, {}, "train.optimizer.learnin_rate is not a config field"),
    ({"train.optimizer.learning_rate": {"float": [0.0, 1e-2]}}, {}, "value 0.0 is outside"),
    ({"train.optimizer.momentum": {"float": [0.5, 1.0]}}, {}, "value 1.0 is outside"),
    ({"train.batch_size": {"categorical": ["64"]}}, {}, "value '64' is a str"),
    ({"train.batch_size": {"float": [8, 64]}}, {}, "takes whole numbers"),
    ({"train.optimizer.name": {"categorical": ["adamw", "lbfgs"]}}, {}, "value 'lbfgs' is outside"),
    ({"ingest.resolution": {"int": [8, 16]}}, {}, "only train.* and model.*"),
    ({"train.optimizer.learning_rate": {"float": [1e-4, 1e-2]}}, {"sampler": "grid"}, "grid sampler needs discrete values"),
    ({"train.optimizer.name": {"categorical": ["sgd", "adamw"]}}, {"sampler": "cmaes"}, "cmaes searches numeric ranges only"),
    ({"train.optimizer.learning_rate": {"float": [1e-4, 1e-2]}}, {"objectives": [{"metric": "val_mse"}]}, "not 'val_mse'"),
])
def test_a_search_space_that_does_not_fit_the_schema_is_one_sentence_naming_it(params, tune, named):
    message = config_error(params, **tune)
    assert named in message and "tune." in message


@settings(max_examples=40, deadline=None)
@given(low=st.floats(-1.0, 1.0, allow_nan=False), width=st.floats(0.0, 1.0, allow_nan=False))
def test_a_learning_rate_range_is_refused_exactly_when_its_low_end_is_not_above_zero(low, width):
    payload = tuning_payload()
    payload["tune"]["params"] = {"train.optimizer.learning_rate": {"float": [low, low + width]}}
    if low > 0:
        parse_section(RunConfig, payload, "c.yaml")
    else:
        with pytest.raises(ConfigError, match="tune.params.train.optimizer.learning_rate: value"):
            parse_section(RunConfig, payload, "c.yaml")


def start(tmp_path: Path, trials: int = 4, **tune):
    from trainflow.experiments.tuning_run import start_study

    return start_study(tuning_config(trials, **tune), tmp_path / "state")


@pytest.mark.slow
def test_pruned_trials_stop_at_once_with_stop_kind_pruned(tmp_path):
    from trainflow.experiments.samplers import pruning_step
    from trainflow.experiments.trial_worker import run_worker

    request = start(tmp_path, trials=6, pruner_startup_trials=1)
    run_worker(request)
    trials = study_trials(Path(request.study_dir))
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert len(trials) == 6 and pruned, "a median pruner over lr 1e-4..5e-2 prunes some of 6 trials"
    for trial in pruned:
        assert trial.user_attrs["trainflow_stop_kind"] == "pruned"
        assert "pruned at step" in trial.user_attrs["trainflow_stop_reason"]
        # Stopped at the validation that was pruned: no training past it, and it is the last one reported
        # (at thousandths of an epoch, so trials with different batch sizes are compared at equal epochs).
        step, epoch = re.search(r"pruned at step (\d+) \(epoch ([0-9.]+)\)", trial.user_attrs["trainflow_stop_reason"]).groups()
        assert trial.user_attrs["trainflow_steps_run"] == int(step)
        assert max(trial.intermediate_values) == pruning_step(float(epoch))
        record = json.loads((Path(request.study_dir) / "trials" / f"{trial.number:05d}" / "model" /
                             "trainflow_training.json").read_text())
        assert record["stop_kind"] == "pruned"


@pytest.mark.slow
def test_a_study_killed_mid_trial_and_run_again_finishes_its_budget_without_repeating_finished_trials(tmp_path):
    request = start(tmp_path, trials=5, pruner="none", stale_after_seconds=600)
    study_dir = Path(request.study_dir)
    worker = subprocess.Popen(WORKER + [str(study_dir / "study.json")], env=os.environ.copy())
    deadline = time.monotonic() + 300
    killed_number = None
    while time.monotonic() < deadline and killed_number is None:
        time.sleep(0.3)
        trials = study_trials(study_dir)
        done = [t for t in trials if t.state.is_finished()]
        running = [t for t in trials if t.state.name == "RUNNING"]
        if len(done) >= 2 and running:
            checkpoints = study_dir / "trials" / f"{running[0].number:05d}" / "checkpoints"
            if checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir()):
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                killed_number = running[0].number
    assert killed_number is not None, "the worker never reached a checkpointed running trial"
    before = {t.number: (t.state, t.values, dict(t.params)) for t in study_trials(study_dir) if t.state.is_finished()}

    # The re-run sees the killed worker's process gone (same host), so the trial is re-queued at once.
    rerun = subprocess.run(WORKER + [str(study_dir / "study.json")], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"trial {killed_number} was left running by a stopped worker" in rerun.stdout
    trials = study_trials(study_dir)
    for number, (state, values, params) in before.items():
        assert (trials[number].state, trials[number].values, dict(trials[number].params)) == (state, values, params)
    counted = [t for t in trials if not t.user_attrs.get("trainflow_stale") and not t.user_attrs.get("trainflow_over_budget")]
    assert len(counted) == 5 and all(t.state.is_finished() for t in counted)
    continuation = next(t for t in trials if t.user_attrs.get("trainflow_continues_trial") == killed_number)
    assert continuation.user_attrs["trainflow_slot"] == killed_number
    assert continuation.params == trials[killed_number].params
    log = (study_dir / "trials" / f"{killed_number:05d}" / "train.log").read_text()
    assert "resuming from checkpoint" in log  # the killed trial's own checkpoints, not a fresh start
    # No finished trial ran twice: every trial number was told once, and the re-run ran only what was left.
    assert len([t for t in trials if t.number in before]) == len(before)
    told = re.findall(r"^tune: trial \d+( \(continues trial \d+\))? (complete|pruned|failed)", rerun.stdout, re.M)
    assert len(told) == 5 - len(before)


@pytest.mark.slow
def test_two_worker_processes_on_one_journal_never_run_the_same_trial(tmp_path):
    request = start(tmp_path, trials=4, pruner="none")
    study_file = str(Path(request.study_dir) / "study.json")
    workers = [subprocess.Popen(WORKER + [study_file], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    trials = study_trials(Path(request.study_dir))
    ran = [t for t in trials if not t.user_attrs.get("trainflow_over_budget")]
    assert len(ran) == 4 and all(t.state.name == "COMPLETE" for t in ran)
    by_worker = [line.split()[2] for out in outputs for line in out.splitlines()
                 if re.match(r"tune: trial \d+ (complete|pruned|failed)", line)]
    assert sorted(int(n) for n in by_worker) == sorted(t.number for t in ran)  # each trial reported by one worker only
    assert all(out.count("tune: trial ") >= 1 for out in outputs), "both workers took trials"
    for trial in ran:  # each trial trained once, in its own folder
        log = (Path(request.study_dir) / "trials" / f"{trial.number:05d}" / "train.log").read_text()
        assert log.count("optimizer steps (") == 1


@pytest.mark.slow
def test_poisoned_test_labels_do_not_change_a_single_trial_so_the_search_never_reads_the_test_split(tmp_path):
    from trainflow.artifacts import LocalArtifact
    from trainflow.config import section_payload
    from trainflow.experiments.study_results import study_results
    from trainflow.experiments.trial_worker import StudyRequest, load_study, run_worker
    from trainflow.stages.build_cache import build_cache
    from trainflow.stages.ingest_split import ingest_split

    config = tuning_config(trials=4)
    outcomes, chosen = [], []
    for name, poison in (("clean", False), ("poisoned", True)):
        data = tmp_path / name
        ingest_split(section_payload(config.ingest), 0, LocalArtifact(str(data / "dataset")),
                     LocalArtifact(str(data / "report.md")), task="classification")
        if poison:
            manifest = data / "dataset" / "manifest.jsonl"
            rows = [json.loads(line) for line in manifest.read_text().splitlines()]
            changed = sum(1 for row in rows if row["split"] == "test")
            for row in rows:
                if row["split"] == "test":
                    row["label"] = (row["label"] + 3) % 10
            manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
            assert changed > 30
        build_cache(str(data / "dataset"), section_payload(config.model), {}, LocalArtifact(str(data / "cache")),
                    task="classification")
        request = StudyRequest(config=section_payload(config), cache_dir=str(data / "cache"),
                               study_dir=str(data / "study"), study_name="poison", seed=0)
        run_worker(request)
        study, _ = load_study(request)
        chosen.append(study_results(study, [("val_accuracy", "maximize")])["best"])
        outcomes.append([(t.state.name, t.params, t.values) for t in study_trials(data / "study")])
    assert outcomes[0] == outcomes[1]  # same proposals (seeded) and the same validation scores, trial by trial
    assert len(outcomes[0]) == 4
    assert chosen[0] == chosen[1]  # so the refit trains the same configuration: its parameters, values and epochs


def test_a_grid_search_tries_every_point_once_even_when_resumed_with_a_new_sampler():
    import optuna

    from trainflow.experiments.samplers import build_sampler
    from trainflow.experiments.search_space import grid_size, suggest_params

    config = tuning_config(trials=8, sampler="grid", params={
        "train.optimizer.learning_rate": {"float": [1e-4, 1e-1], "log": True, "grid_points": 4},
        "train.batch_size": {"categorical": [16, 32]}})
    assert grid_size(config.tune) == 8
    storage = optuna.storages.InMemoryStorage()
    seen = []
    for _ in range(2):  # a resumed run builds its sampler afresh and must go on through the same shuffled grid
        study = optuna.create_study(storage=storage, study_name="grid", load_if_exists=True,
                                    sampler=build_sampler(config.tune, seed=7, workers=1))
        for _ in range(4):
            trial = study.ask()
            params = suggest_params(trial, config.tune, {})
            seen.append((params["train.optimizer.learning_rate"], params["train.batch_size"]))
            study.tell(trial, 0.5)
    assert len(set(seen)) == 8
    assert sorted({lr for lr, _ in seen}) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    assert max(lr for lr, _ in seen) <= 1e-1  # the log grid's top end is the range's end, not a hair past it


@pytest.mark.slow
def test_tune_refits_the_best_configuration_on_train_plus_val_then_evaluates_and_registers_it(tmp_path):
    from trainflow.data.manifest import read_manifest
    from trainflow.experiments.tuning_run import tune_locally

    outcome = tune_locally(tuning_config(trials=2, refit="train_val", pruner="none"), tmp_path / "state")
    best, refit = outcome.results["best"], outcome.results["refit"]
    folder = Path(refit["folder"])
    assert folder.name == f"trial-{best['number']:05d}-train_val"
    original = read_manifest(Path(outcome.request.study_dir) / "data" / "dataset")
    resplit = read_manifest(folder / "dataset")
    trained_on = {e.record_id for e in resplit if e.split == "train"}
    assert {e.record_id for e in original if e.split in ("train", "val")} <= trained_on
    assert not trained_on & {e.record_id for e in original if e.split == "test"}
    record = json.loads((folder / "model" / "trainflow_training.json").read_text())
    assert record["steps_run"] > 0 and 0.0 <= refit["test_metrics"]["accuracy"] <= 1.0
    assert refit["registration"]["registered"] is True and refit["registration"]["model_version"]
    # Lineage names the study's ingested split (the refit's train+val is derived from it with tune.refit).
    import hashlib

    from mlflow import MlflowClient

    uri = refit["registration"]["tracking_uri"]
    tags = MlflowClient(uri, registry_uri=uri).get_model_version(refit["registration"]["model_name"],
                                                                 str(refit["registration"]["model_version"])).tags
    manifest = Path(outcome.request.study_dir) / "data" / "dataset" / "manifest.jsonl"
    assert tags["trainflow.lineage.split_manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()


def test_cmaes_without_its_package_is_one_sentence_before_any_data_is_prepared(tmp_path, monkeypatch):
    from trainflow.errors import UserFacingError
    from trainflow.experiments.tuning_run import start_study

    monkeypatch.setitem(sys.modules, "cmaes", None)  # what `import cmaes` meets where it is not installed
    config = tuning_config(sampler="cmaes", params={"train.optimizer.learning_rate": {"float": [1e-4, 1e-2], "log": True},
                                                    "model.width": {"int": [4, 8]}})
    with pytest.raises(UserFacingError) as caught:
        start_study(config, tmp_path / "state")
    assert str(caught.value).startswith("tune.sampler: cmaes needs the `cmaes` package")
    assert not (tmp_path / "state").exists()


def test_tune_command_line_overrides_are_checked_like_the_config_itself(capsys):
    from trainflow.cli import main

    config = str(Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "diabetes-regression.yaml")
    assert main(["tune", "--config", config, "--sampler", "grid"]) == 2
    err = capsys.readouterr().err
    assert "with --sampler: tune.params.train.optimizer.learning_rate: the grid sampler needs discrete values" in err
    assert len(err.strip().splitlines()) == 1
    from trainflow.commands.tune import tuned_config

    config_obj = tuned_config(config, {"trials": 3, "sampler": "random", "pruner": "none", "refit": "train_val",
                                       "wall_time_minutes": 2.5, "workers": None})
    tune = config_obj.tune
    assert (tune.trials, tune.sampler, tune.pruner, tune.refit, tune.wall_time_minutes, tune.workers) == \
        (3, "random", "none", "train_val", 2.5, 1)
