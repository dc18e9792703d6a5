"""The registry against a real tracking server: `mlflow server` on 127.0.0.1 over a throwaway PostgreSQL 15.

The same registration as the SQLite tests, through MLflow's REST API and proxied artifacts: a retry of
the same pipeline run gives one version, the version loads as an MLflow Model, and neither the database
password (the server's backend URI) nor a password in the tracking URI reaches anything trainflow records.
"""

from __future__ import annotations

import os

import pytest

from registry_fixtures import register_table_model, table_classifier
from tracking_servers import DB_PASSWORD, PostgresMlflowServer, postgres_bin

pytestmark = [
    pytest.mark.slow,  # initdb + mlflow server's schema migrations: 30 s idle, ~2 min on a busy 2-core machine
    pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL's initdb is not installed (apt-get install postgresql-15)"),
]


@pytest.fixture(scope="module")
def server():
    running = PostgresMlflowServer()
    try:
        yield running.start()
    finally:
        running.stop()


def test_registration_through_a_postgres_backed_server_is_idempotent_and_loads(server, tmp_path, capsys):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    model_dir = table_classifier(tmp_path / "model")
    uri = server.uri.replace("http://", "http://alice:planted-uri-password@")
    params = {"register": {"tracking_uri": uri}}
    first = register_table_model(model_dir, uri, tmp_path / "r1.md", pipeline_run_id="kfp-pg", params=params)
    again = register_table_model(model_dir, uri, tmp_path / "r2.md", pipeline_run_id="kfp-pg", params=params)
    assert first["model_version"] == again["model_version"] == 1 and first["promoted"]
    client = MlflowClient(server.uri, registry_uri=server.uri)
    assert [int(v.version) for v in client.search_model_versions("name='table'")] == [1]

    mlflow.set_tracking_uri(server.uri)
    model = mlflow.pyfunc.load_model("models:/table@champion")
    answer = model.predict(pd.DataFrame({"f1": [1.0], "f2": [2.0], "f3": [3.0]}))
    assert list(answer.columns) == ["predicted_class", "probability_a", "probability_b"]

    run = client.get_run(first["mlflow_run_id"])
    recorded = [*run.data.params.values(), *run.data.tags.values(), (tmp_path / "r1.md").read_text(),
                (tmp_path / "r2.md").read_text(), str(first), *capsys.readouterr(),
                *client.get_model_version("table", "1").tags.values()]
    for secret in ("planted-uri-password", DB_PASSWORD):
        assert not [text for text in recorded if secret in text], secret
    assert first["tracking_uri"] == server.uri.replace("http://", "http://***@")
    assert os.environ.get("MLFLOW_TRACKING_URI") is None or "planted" not in os.environ["MLFLOW_TRACKING_URI"]
