"""Registration is idempotent and consistent: retries after a kill at any step, concurrent registrations, an
unreachable tracking server, promote and rollback by people, credentials kept out of everything recorded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from registry_fixtures import register_table_model, table_classifier

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# A register step run in its own process; CRASH_AFTER names a step after which the process dies at once
# (os._exit: no cleanup, no exception handling), as a killed pod would.
REGISTER_SCRIPT = """
import os, sys
from pathlib import Path
from registry_fixtures import register_table_model

point = os.environ.get("CRASH_AFTER")
if point:
    module_name, function_name = point.rsplit(".", 1)
    import importlib
    module = importlib.import_module(module_name)
    original = getattr(module, function_name)
    def crashing(*args, **kwargs):
        original(*args, **kwargs)
        os._exit(17)
    setattr(module, function_name, crashing)
outcome = register_table_model(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), pipeline_run_id=sys.argv[4])
print("VERSION", outcome["model_version"])
"""

CRASH_POINTS = ["trainflow.registry.registration.open_run", "trainflow.registry.registration.record_decision",
                "trainflow.registry.registration.logged_model", "trainflow.registry.registration.version_of_run",
                "trainflow.registry.promotion.apply_decision", "trainflow.registry.registration.finish"]


def register_in_subprocess(model_dir: Path, uri: str, report: Path, run_id: str, crash_after: str = ""):
    env = {**os.environ, "CRASH_AFTER": crash_after,
           "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", REGISTER_SCRIPT, str(model_dir), uri, str(report), run_id], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def versions_and_runs(uri: str, key: str | None = None) -> tuple[list[int], int]:
    from mlflow import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    versions = sorted(int(v.version) for v in client.search_model_versions("name='table'"))
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`trainflow.registration_key` = '{key}'" if key else "")
    return versions, len(runs)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return table_classifier(tmp_path / "model")


def test_a_repeated_registration_with_the_same_run_id_registers_one_version(model_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = register_table_model(model_dir, uri, tmp_path / "r1.md", pipeline_run_id="kfp-run-1")
    again = register_table_model(model_dir, uri, tmp_path / "r2.md", pipeline_run_id="kfp-run-1")
    assert first["model_version"] == again["model_version"] == 1 and first["mlflow_run_id"] == again["mlflow_run_id"]
    assert versions_and_runs(uri, "kfp-run-1/classification") == ([1], 1)
    other = register_table_model(model_dir, uri, tmp_path / "r3.md", pipeline_run_id="kfp-run-2")
    assert other["model_version"] == 2 and not other["promoted"], "another pipeline run is another version"
    assert "stays challenger" in other["promotion_reason"]


class Killed(BaseException):
    """Stands for the pod being killed: no `except Exception` in the stage or in MLflow catches it."""


def test_a_register_step_killed_after_each_step_and_retried_ends_with_exactly_one_version(model_dir, tmp_path,
                                                                                         monkeypatch):
    import importlib

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for point in CRASH_POINTS:  # each retry finds what the killed attempts did and gets one step further
        module_name, function_name = point.rsplit(".", 1)
        module = importlib.import_module(module_name)
        original = getattr(module, function_name)

        def killed_after(*args, _original=original, **kwargs):
            _original(*args, **kwargs)
            raise Killed(point)

        with monkeypatch.context() as patch:
            patch.setattr(module, function_name, killed_after)
            with pytest.raises(Killed):
                register_table_model(model_dir, uri, tmp_path / "r.md", pipeline_run_id="kfp-run-7")
    outcome = register_table_model(model_dir, uri, tmp_path / "r.md", pipeline_run_id="kfp-run-7")
    assert outcome["model_version"] == 1 and outcome["promoted"]
    assert versions_and_runs(uri, "kfp-run-7/classification") == ([1], 1)
    client = MlflowClient(uri, registry_uri=uri)
    assert int(client.get_model_version_by_alias("table", "champion").version) == 1
    run = client.get_run(client.get_model_version("table", "1").run_id)
    assert run.info.status == "FINISHED" and run.data.tags["trainflow.registration"] == "complete"
    experiment = client.get_experiment_by_name("tests").experiment_id
    assert len([m for m in client.search_logged_models([experiment]) if str(m.status) == "READY"]) == 1
    assert "Registered **table** version **1**" in (tmp_path / "r.md").read_text()


@pytest.mark.slow  # two register processes, each importing torch and MLflow: ~1-2 min on a busy 2-core machine
def test_a_register_process_killed_right_after_logging_the_model_is_finished_by_its_retry(model_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed = register_in_subprocess(model_dir, uri, tmp_path / "r.md", "kfp-run-8", "trainflow.registry.registration.logged_model")
    _, err = killed.communicate(timeout=300)
    assert killed.returncode == 17, err[-2000:]
    assert versions_and_runs(uri, "kfp-run-8/classification") == ([], 1), "killed before the version: no version yet"
    retried = register_in_subprocess(model_dir, uri, tmp_path / "r.md", "kfp-run-8")
    out, err = retried.communicate(timeout=300)
    assert retried.returncode == 0 and "VERSION 1" in out, err[-2000:]
    assert versions_and_runs(uri, "kfp-run-8/classification") == ([1], 1)


@pytest.mark.slow  # two register processes at once: ~1-2 min on a busy 2-core machine
def test_two_concurrent_registrations_both_get_versions_and_consistent_aliases(model_dir, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_table_model(model_dir, uri, tmp_path / "setup.md", pipeline_run_id="kfp-setup")  # tables and version 1
    runs = [register_in_subprocess(model_dir, uri, tmp_path / f"r{i}.md", f"kfp-concurrent-{i}") for i in (1, 2)]
    results = [run.communicate(timeout=400) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in results]
    versions, _ = versions_and_runs(uri)
    assert versions == [1, 2, 3]
    client = MlflowClient(uri, registry_uri=uri)
    assert int(client.get_model_version_by_alias("table", "champion").version) == 1  # neither could beat it unrun
    assert int(client.get_model_version_by_alias("table", "challenger").version) in {2, 3}
    for version in ("2", "3"):
        assert client.get_model_version("table", version).tags["trainflow.promotion"].startswith("stays challenger")


def test_people_promote_and_roll_back_recording_who_and_why(model_dir, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from trainflow.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for run_id in ("a", "b"):
        register_table_model(model_dir, uri, tmp_path / f"{run_id}.md", pipeline_run_id=run_id)
    monkeypatch.setenv("TRAINFLOW_USER", "dana")
    assert main(["promote", "table", "2", "--reason", "better on the March data", "--tracking-uri", uri]) == 0
    client = MlflowClient(uri, registry_uri=uri)
    assert int(client.get_model_version_by_alias("table", "champion").version) == 2
    tags = client.get_model_version("table", "2").tags
    assert tags["trainflow.promoted_by"] == "dana" and tags["trainflow.promoted_reason"] == "better on the March data"
    assert main(["rollback", "table", "--reason", "latency regression", "--tracking-uri", uri]) == 0
    assert "moved back from version 2 to version 1 (by dana)" in capsys.readouterr().out
    assert int(client.get_model_version_by_alias("table", "champion").version) == 1
    assert client.get_model_version("table", "2").tags["trainflow.rolled_back_reason"] == "latency regression"
    assert client.get_model_version("table", "1").tags["trainflow.restored_by"] == "dana"
    assert main(["rollback", "table", "--reason", "again", "--tracking-uri", uri]) == 2
    assert "no earlier one to roll back to" in capsys.readouterr().err
    assert main(["promote", "table", "9", "--reason", "x", "--tracking-uri", uri]) == 2
    assert "has no version 9" in capsys.readouterr().err


def test_an_unreachable_tracking_server_is_retried_then_fails_in_one_sentence_without_credentials(model_dir, tmp_path,
                                                                                                   monkeypatch, capsys):
    from trainflow.errors import ServiceUnavailableError
    from trainflow.registry import tracking

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    waits = []
    monkeypatch.setattr(tracking.time, "sleep", waits.append)
    with pytest.raises(ServiceUnavailableError) as caught:  # the stage exits 3: its retry policy runs it again
        register_table_model(model_dir, f"http://alice:planted-secret@127.0.0.1:{port}", tmp_path / "r.md",
                             pipeline_run_id="kfp-x")
    message = str(caught.value)
    assert waits == [1.0, 2.0, 4.0], "four tries with doubling waits"
    assert f"http://***@127.0.0.1:{port} did not answer after 4 tries" in message and "nothing was registered" in message
    assert "planted-secret" not in message and "\n" not in message
    waiting = capsys.readouterr().err.splitlines()
    assert [line for line in waiting if "trying again" in line] == [
        f"trainflow: the MLflow tracking store http://***@127.0.0.1:{port} did not answer; trying again in {w} s "
        f"(try {n} of 4)" for n, w in ((2, 1), (3, 2), (4, 4))]


def test_credentials_in_uris_never_reach_params_tags_reports_or_output(model_dir, tmp_path, capsys):
    from mlflow import MlflowClient

    from trainflow.redaction import redact_text

    assert redact_text("postgresql://u:p@h:5/db and https://tok@x.io/a") == "postgresql://***@h:5/db and https://***@x.io/a"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {"register": {"tracking_uri": "postgresql://bob:planted-secret@db:5432/mlflow"},
              "ingest": {"dataset_dir": "s3://key:planted-secret@bucket/data"}}
    outcome = register_table_model(model_dir, uri, tmp_path / "r.md", pipeline_run_id="kfp-c", params=params)
    run = MlflowClient(uri).get_run(outcome["mlflow_run_id"])
    recorded = [*run.data.params.values(), *run.data.tags.values(), (tmp_path / "r.md").read_text(),
                str(outcome), capsys.readouterr().out]
    assert not [text for text in recorded if "planted-secret" in text]
    assert run.data.params["register.tracking_uri"] == "postgresql://***@db:5432/mlflow"
