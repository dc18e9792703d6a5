"""Credentials in URIs never reach a record: summary, reports, metadata, MLflow params and tags, logs, command lines.

The end-to-end test plants a password in the tracking URI of a small local run against an MLflow
server (served in this process over HTTP), then greps everything the run left behind for it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from trainflow.config import load_config
from trainflow.errors import ConfigError, UserFacingError
from trainflow.redaction import (
    MASK, environment_variables, redact, redact_text, split_credentials, uri_with_environment_credentials,
)

PLANTED = "Planted7Secret9Password"
SECRETS = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="/?#@'\"<>&;="),
                  min_size=6, max_size=30)


@settings(max_examples=200, deadline=None)
@given(user=st.from_regex(r"[a-z][a-z0-9._-]{0,12}", fullmatch=True), password=SECRETS,
       scheme=st.sampled_from(["http", "https", "postgresql", "mysql+pymysql", "s3", "databricks"]),
       around=st.sampled_from(["{}", "connecting to {} failed", "uri={}, retrying", "'{}'", "[{}]"]))
def test_a_password_in_any_uri_is_masked_in_text(user, password, scheme, around):
    uri = f"{scheme}://{user}:{password}@host.example:5000/path"
    shown = redact_text(around.format(uri))
    # Exactly the URI's credentials go (the password may also be a word of the text around it, such as "failed").
    assert shown == around.format(f"{scheme}://{MASK}@host.example:5000/path")


@settings(max_examples=100, deadline=None)
@given(key=st.sampled_from(["token", "sig", "X-Amz-Signature", "access_token", "password", "api_key"]), value=SECRETS)
def test_a_secret_query_value_is_masked(key, value):
    shown = redact_text(f"https://store.example/blob?sv=2024&{key}={value}&x=1")
    assert value not in shown and f"{key}={MASK}" in shown and "sv=2024" in shown


def test_redact_walks_nested_records_and_leaves_other_values():
    record = {"register": {"tracking_uri": f"http://a:{PLANTED}@h", "gates": [f"https://x/?token={PLANTED}"]},
              "n": 3, "ok": True}
    assert PLANTED not in repr(redact(record)) and redact(record)["n"] == 3
    assert redact_text("plain text, a@b.c, key: value") == "plain text, a@b.c, key: value"


def test_split_credentials_moves_user_and_password_to_the_environment():
    uri, environment = split_credentials(f"http://alice:{PLANTED}%40x@mlflow:5000")
    assert uri == "http://mlflow:5000"
    assert environment == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": f"{PLANTED}@x"}
    assert split_credentials("sqlite:////tmp/m.db") == ("sqlite:////tmp/m.db", {})


def test_a_database_uri_gets_the_environment_credentials_back_for_its_client_only():
    with environment_variables({"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "p@ss"}):
        assert uri_with_environment_credentials("postgresql://db:5432/mlflow") == "postgresql://alice:p%40ss@db:5432/mlflow"
        assert uri_with_environment_credentials("http://mlflow:5000") == "http://mlflow:5000"  # MLflow reads the env
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ or os.environ["MLFLOW_TRACKING_USERNAME"] != "alice"


def test_a_token_in_the_tracking_uri_query_is_refused_with_the_alternative(tmp_path):
    payload = {"run_name": "s", "task": "regression", "ingest": {"sklearn_dataset": "diabetes"},
               "model": {"architecture": "mlp"},
               "register": {"model_name": "s", "tracking_uri": f"https://mlflow.example/?token={PLANTED}"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(payload))
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_TOKEN") as error:
        load_config(tmp_path / "run.yaml")
    assert PLANTED not in str(error.value)


def test_credentials_in_the_platform_uri_are_refused(tmp_path):
    payload = {"run_name": "s", "task": "regression", "ingest": {"sklearn_dataset": "diabetes"},
               "model": {"architecture": "mlp"}, "register": {"model_name": "s"},
               "platform": {"mlflow_tracking_uri": f"http://alice:{PLANTED}@mlflow:5000"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(payload))
    with pytest.raises(ConfigError, match=r"platform\.mlflow_tracking_uri: the URI carries credentials") as error:
        load_config(tmp_path / "run.yaml")
    assert PLANTED not in str(error.value)


def test_a_user_error_holding_a_uri_is_printed_masked(capsys):
    from trainflow.stages.runner import run_stage

    def register_model():
        raise UserFacingError(f"cannot reach http://alice:{PLANTED}@mlflow:5000")

    with pytest.raises(SystemExit):
        run_stage(register_model)
    assert PLANTED not in capsys.readouterr().err


def test_a_crash_whose_traceback_holds_a_uri_is_printed_masked(capsys):
    from trainflow.stages.runner import run_stage

    def register_model():
        raise RuntimeError(f"connection to postgresql://alice:{PLANTED}@db/mlflow refused")

    with pytest.raises(SystemExit) as stopped:
        run_stage(register_model)
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and PLANTED not in err and "RuntimeError: connection to postgresql://***@db" in err


# ------------------------------------------------------------------ a whole local run against an MLflow server
@pytest.fixture
def mlflow_server(tmp_path):
    """An MLflow tracking server over HTTP in this process (its Flask app under werkzeug), on a free port."""
    from werkzeug.serving import make_server

    import mlflow.server
    from mlflow.server import handlers

    store = tmp_path / "server"
    store.mkdir()
    variables = {"_MLFLOW_SERVER_FILE_STORE": f"sqlite:///{store / 'mlflow.db'}",
                 "_MLFLOW_SERVER_ARTIFACT_ROOT": str(store / "artifacts")}
    passwords: list[str] = []  # what clients sent as HTTP basic auth: proves the credentials still reach MLflow

    def record_auth():
        from flask import request

        if request.authorization is not None:
            passwords.append(request.authorization.password or "")

    hooks = mlflow.server.app.before_request_funcs.setdefault(None, [])
    hooks.append(record_auth)
    # The server's handlers export their store as MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI when they first build
    # it; restoring them keeps later tests (and the processes they start) off this server's store.
    leaked = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    with environment_variables(variables), environment_variables({k: v for k, v in leaked.items() if v is not None}):
        handlers._tracking_store = handlers._model_registry_store = None
        server = make_server("127.0.0.1", 0, mlflow.server.app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"127.0.0.1:{server.server_port}", store, passwords
        finally:
            server.shutdown()
            hooks.remove(record_auth)
            handlers._tracking_store = handlers._model_registry_store = None
            for name, value in leaked.items():
                if value is None:
                    os.environ.pop(name, None)


@pytest.mark.slow
def test_a_planted_password_appears_in_nothing_a_run_records(tmp_path, mlflow_server, capfd, monkeypatch):
    from kfp.local import subprocess_task_handler
    from mlflow import MlflowClient

    from trainflow.cli import main

    address, server_store, passwords = mlflow_server
    command_lines: list[str] = []
    real_run = subprocess_task_handler.run_local_subprocess

    def recording_run(full_command, env_vars=None):
        command_lines.append(" ".join(full_command) + repr(env_vars))
        return real_run(full_command, env_vars)

    monkeypatch.setattr(subprocess_task_handler, "run_local_subprocess", recording_run)
    config = {
        "run_name": "secret-check", "task": "regression", "seed": 0,
        "ingest": {"sklearn_dataset": "diabetes", "max_records": 120},
        "model": {"architecture": "mlp", "hidden_sizes": [8]},
        "train": {"max_epochs": 2, "batch_size": 32, "logging": {"tensorboard": False}},
        "evaluate": {"bootstrap_resamples": 0},
        "register": {"model_name": "secret-check", "experiment": "secrets",
                     "tracking_uri": f"http://alice:{PLANTED}@{address}"},
    }
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    state, summary = tmp_path / "state", tmp_path / "summary.json"
    code = main(["run", "--config", str(config_path), "--state-dir", str(state), "--summary-json", str(summary),
                 "--verbose"])
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    assert PLANTED not in out and PLANTED not in err
    assert command_lines and not any(PLANTED in line for line in command_lines)
    assert passwords and set(passwords) == {PLANTED}  # the register stage authenticated with it, from its environment
    written = [path for root in (state, summary, server_store) for path in
               ([root] if root.is_file() else root.rglob("*")) if path.is_file()]
    assert len(written) > 20
    leaks = [str(path) for path in written if PLANTED.encode() in path.read_bytes()]
    assert leaks == []
    passwords.clear()
    client = MlflowClient(tracking_uri=f"http://{address}")
    experiment = client.get_experiment_by_name("secrets")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.`trainflow.stage` = 'register_model'")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`trainflow.kind` = 'pipeline'")
    nested = client.search_runs([experiment.experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {child.data.tags["trainflow.stage"] for child in nested} == {"evaluate", "register_model"}
    assert run.data.params["register.tracking_uri"] == f"http://{MASK}@{address}"
    recorded = repr(run.data.params) + repr(run.data.tags) + repr(client.get_registered_model("secret-check"))
    assert PLANTED not in recorded
    assert yaml.safe_load(summary.read_text())["registration"]["tracking_uri"] == f"http://{address}"
