"""`trainflow submit`, `schedule` and `runs` against a fake KFP API that checks request shapes."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fake_kfp_api import FakeKfpApi
from trainflow.cli import main
from trainflow.errors import UserFacingError
from trainflow.kubeflow import pipeline_package

TOKEN = "kfp-test-token-7f3a9c"
CRON = "0 0 3 * * *"


def write_config(folder: Path, seed: int = 0) -> Path:
    """A cluster config: the paths are the pods' paths, so they need not exist here."""
    path = folder / f"cluster-seed{seed}.yaml"
    path.write_text(yaml.safe_dump({
        "run_name": "nightly-digits", "seed": seed,
        "ingest": {"dataset_dir": "/data/digits", "resolution": 32},
        "model": {"base": "/weights/tiny-sd"},
        "register": {"model_name": "digits-text-to-image", "experiment": "digits-nightly"},
    }))
    return path


@pytest.fixture(autouse=True)
def isolated_kfp_environment(monkeypatch, tmp_path):
    # A developer's ~/.config/kfp/context.json or KF_PIPELINES_* variables must not steer the tests.
    from kfp.client import client

    monkeypatch.setattr(client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in ("KFP_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
                 "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def kfp_api():
    with FakeKfpApi() as api:
        yield api
    assert api.problems == [], "a request did not have the shape the KFP API expects"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_submit_uploads_the_package_once_and_starts_a_run(kfp_api, tmp_path, capsys):
    config = write_config(tmp_path)
    code, out, err = run_cli(capsys, "submit", "--host", kfp_api.url, "--config", str(config))

    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and err == ""
    run_id = re.search(re.escape(kfp_api.url) + r"/#/runs/details/([0-9a-f-]{36})$", lines[0]).group(1)
    run = kfp_api.runs[run_id]
    [version] = kfp_api.versions.values()
    [pipeline] = kfp_api.pipelines.values()
    assert pipeline.display_name == "trainflow-text-to-image"
    assert re.fullmatch(r"trainflow-text-to-image-[0-9a-f]{12}", version.name)
    assert run.pipeline_version_reference.pipeline_version_id == version.pipeline_version_id
    assert run.pipeline_version_reference.pipeline_id == pipeline.pipeline_id
    assert run.runtime_config.parameters == {}  # everything comes from the baked-in defaults
    assert run.display_name.startswith("nightly-digits-")
    assert kfp_api.experiments[run.experiment_id].display_name == "digits-nightly"
    defaults = version.pipeline_spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["run_name"]["defaultValue"] == "nightly-digits"
    assert defaults["ingest_config"]["defaultValue"]["dataset_dir"] == "/data/digits"


def test_resubmitting_an_unchanged_package_adds_a_run_but_no_version(kfp_api, tmp_path, capsys):
    config = write_config(tmp_path)
    run_cli(capsys, "submit", "--host", kfp_api.url, "--config", str(config), "--run-name", "first")
    code, out, _ = run_cli(capsys, "submit", "--host", kfp_api.url, "--config", str(config), "--run-name", "second")

    assert code == 0 and "existing version" in out
    assert len(kfp_api.pipelines) == 1 and len(kfp_api.versions) == 1 and len(kfp_api.experiments) == 1
    assert sorted(run.display_name for run in kfp_api.runs.values()) == ["first", "second"]
    assert len({run.pipeline_version_reference.pipeline_version_id for run in kfp_api.runs.values()}) == 1


def test_a_changed_config_adds_a_new_version_of_the_same_pipeline(kfp_api, tmp_path, capsys):
    run_cli(capsys, "submit", "--host", kfp_api.url, "--config", str(write_config(tmp_path, seed=0)))
    code, out, _ = run_cli(capsys, "submit", "--host", kfp_api.url, "--config", str(write_config(tmp_path, seed=7)))

    assert code == 0 and "new version" in out
    assert len(kfp_api.pipelines) == 1 and len(kfp_api.versions) == 2
    latest_run = max(kfp_api.runs.values(), key=lambda run: run.created_at)
    latest_version = max(kfp_api.versions.values(), key=lambda version: version.created_at)
    assert latest_run.pipeline_version_reference.pipeline_version_id == latest_version.pipeline_version_id


def test_the_content_hash_is_the_same_when_compiled_in_another_process(tmp_path):
    # The compiler's header comment orders dict defaults differently per process; the version name must not.
    from trainflow.config import load_config

    config_path = write_config(tmp_path)
    here = pipeline_package.compile_pipeline_package(
        load_config(config_path, check_local_paths=False), "text-to-image", tmp_path / "here.yaml"
    )
    there = tmp_path / "there.yaml"
    subprocess.run([sys.executable, "-m", "trainflow", "compile", "--config", str(config_path), "--output", str(there)],
                   check=True, capture_output=True)
    assert pipeline_package.version_name_for(here) == pipeline_package.version_name_for(there)


def test_schedule_creates_one_recurring_run_with_the_right_shape(kfp_api, tmp_path, capsys):
    code, out, err = run_cli(capsys, "schedule", "--host", kfp_api.url, "--config", str(write_config(tmp_path)), "--cron", CRON)

    assert code == 0, err
    [job] = kfp_api.recurring_runs.values()
    [version] = kfp_api.versions.values()
    assert out.strip().endswith(f"/#/recurringrun/details/{job.recurring_run_id}")
    assert job.display_name == "nightly-digits-schedule"
    assert job.max_concurrency == "1" and job.no_catchup is True and job.mode == "ENABLE"
    assert job.trigger.cron_schedule.cron == CRON and job.trigger.periodic_schedule is None
    assert job.pipeline_version_reference.pipeline_version_id == version.pipeline_version_id
    assert job.runtime_config.parameters == {}
    assert kfp_api.experiments[job.experiment_id].display_name == "digits-nightly"


def test_schedule_leaves_an_existing_one_alone_unless_told_to_replace_it(kfp_api, tmp_path, capsys):
    args = ["schedule", "--host", kfp_api.url, "--config", str(write_config(tmp_path)), "--cron", CRON, "--name", "nightly"]
    run_cli(capsys, *args)
    [first_id] = kfp_api.recurring_runs

    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "already exists" in out and "--replace" in out
    assert list(kfp_api.recurring_runs) == [first_id]

    code, out, _ = run_cli(capsys, *args, "--replace")
    [second_id] = kfp_api.recurring_runs
    assert code == 0 and "replacing 1" in out and second_id != first_id


@pytest.mark.parametrize("cron, expected", [("0 3 * * *", "has 5 field(s)"), ("0 0 3 * * * *", "has 7 field(s)"),
                                            ("0 0 3 * * {}", "day-of-week field")])
def test_schedule_rejects_a_cron_without_six_fields_before_any_request(kfp_api, tmp_path, capsys, cron, expected):
    code, out, err = run_cli(capsys, "schedule", "--host", kfp_api.url, "--config", str(write_config(tmp_path)), "--cron", cron)

    assert code == 2 and expected in err and "--cron" in err
    assert len(err.strip().splitlines()) == 1 and kfp_api.requests == []


def test_runs_lists_recent_runs_newest_first_with_their_status(kfp_api, tmp_path, capsys):
    config = str(write_config(tmp_path))
    for name in ("older-run", "newer-run"):
        run_cli(capsys, "submit", "--host", kfp_api.url, "--config", config, "--run-name", name)
    older = next(run for run in kfp_api.runs.values() if run.display_name == "older-run")
    older.state = "SUCCEEDED"

    code, out, err = run_cli(capsys, "runs", "--host", kfp_api.url, "--experiment", "digits-nightly", "--limit", "5")

    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if re.search(r"[0-9a-f-]{36}", line)]
    assert [row[3] for row in rows] == ["newer-run", "older-run"]
    assert rows[0][0] == "PENDING" and rows[1] == ["SUCCEEDED", "2025-01-01", older.created_at.strftime("%H:%M:%S"),
                                                   "older-run", older.run_id]
    code, _, _ = run_cli(capsys, "runs", "--host", kfp_api.url, "--limit", "1")
    assert code == 0

    code, _, err = run_cli(capsys, "runs", "--host", kfp_api.url, "--experiment", "no-such-experiment")
    assert code == 2 and "no experiment named 'no-such-experiment'" in err


def test_connection_refused_is_one_sentence(tmp_path, capsys):
    host = f"http://127.0.0.1:{free_port()}"
    for argv in (["runs"], ["submit", "--config", str(write_config(tmp_path))]):
        code, out, err = run_cli(capsys, *argv, "--host", host)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and "connection refused" in err and "Traceback" not in err


def test_the_token_is_sent_as_a_bearer_header_and_never_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    monkeypatch.setenv("TEAM_KFP_TOKEN", TOKEN)
    with FakeKfpApi(token=TOKEN) as api:
        outputs = [run_cli(capsys, "submit", "--host", api.url, "--config", str(write_config(tmp_path))),
                   run_cli(capsys, "runs", "--host", api.url, "--token-env", "TEAM_KFP_TOKEN")]
    assert api.problems == []
    assert [code for code, _, _ in outputs] == [0, 0]
    assert api.requests and all(request.authorization == f"Bearer {TOKEN}" for request in api.requests)
    assert all(TOKEN not in out + err for _, out, err in outputs)


def test_a_missing_or_wrong_token_is_one_sentence_naming_the_variable(tmp_path, capsys, monkeypatch):
    with FakeKfpApi(token=TOKEN) as api:
        code, _, err = run_cli(capsys, "runs", "--host", api.url)
        assert code == 2 and "HTTP 401" in err and "KFP_TOKEN" in err and err.count("\n") == 1
        monkeypatch.setenv("KFP_TOKEN", "wrong-token-value")
        code, out, err = run_cli(capsys, "runs", "--host", api.url)
        assert code == 2 and "HTTP 401" in err and "wrong-token-value" not in out + err
        code, _, err = run_cli(capsys, "runs", "--host", api.url, "--token-env", "UNSET_TOKEN_VARIABLE")
        assert code == 2 and "UNSET_TOKEN_VARIABLE" in err and "unset or empty" in err


def test_a_host_without_the_kfp_api_is_a_404_sentence(kfp_api, capsys):
    code, _, err = run_cli(capsys, "runs", "--host", f"{kfp_api.url}/not-kubeflow")
    assert code == 2 and "HTTP 404" in err and "--host" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "runs", "--host", "localhost:8080")
    assert code == 2 and "must start with http:// or https://" in err


def test_multi_user_kfp_needs_a_namespace_and_then_uses_it(tmp_path, capsys):
    with FakeKfpApi(multi_user=True) as api:
        code, _, err = run_cli(capsys, "submit", "--host", api.url, "--config", str(write_config(tmp_path)))
        assert code == 2 and "--namespace" in err and api.runs == {}
        code, _, err = run_cli(capsys, "submit", "--host", api.url, "--config", str(write_config(tmp_path)),
                               "--namespace", "team-vision")
    assert code == 0, err
    assert api.problems == []
    [pipeline] = api.pipelines.values()
    [experiment] = api.experiments.values()
    assert pipeline.namespace == "team-vision" and experiment.namespace == "team-vision"


def test_the_pipeline_follows_the_task_and_a_missing_module_is_a_clear_error(tmp_path, monkeypatch):
    assert pipeline_package.default_pipeline(SimpleNamespace(task="text_to_image")) == "text-to-image"
    assert pipeline_package.default_pipeline(SimpleNamespace(task="classification")) == "supervised"
    monkeypatch.setitem(pipeline_package.PIPELINES, "supervised", ("pipelines.not_written_yet", "supervised_pipeline"))
    with pytest.raises(UserFacingError, match="pipelines.not_written_yet is missing"):
        pipeline_package.compile_pipeline_package(SimpleNamespace(), "supervised", tmp_path / "p.yaml")
    with pytest.raises(UserFacingError, match="unknown pipeline 'tabular'"):
        pipeline_package.compile_pipeline_package(SimpleNamespace(), "tabular", tmp_path / "p.yaml")


@pytest.mark.parametrize("body, complaint", [
    ({"display_name": "x", "experiment_id": "e", "runtime_config": {}, "unexpected_field": 1}, "unexpected_field"),
    ({"display_name": "x", "experiment_id": "missing", "runtime_config": {}, "pipeline_spec": {}}, "names no experiment"),
])
def test_the_fake_rejects_and_records_a_badly_shaped_request(body, complaint):
    with FakeKfpApi() as api:
        request = urllib.request.Request(f"{api.url}/apis/v2beta1/runs", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
    assert answer.value.code == 400
    assert len(api.problems) == 1 and complaint in api.problems[0]
