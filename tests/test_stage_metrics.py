"""Stages push their duration and outcome to a Pushgateway: checked against a tiny fake one on 127.0.0.1."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from trainflow.errors import UserFacingError
from trainflow.stages.outcome_metrics import OUTCOMES, PUSHGATEWAY_ENV
from trainflow.stages.runner import USER_ERROR_EXIT_CODE, run_stage


class FakePushgateway(http.server.ThreadingHTTPServer):
    """Records every request; answers `status` (the real one answers 200 to a good push)."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[dict] = []
        self.status = status
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                        "body": body.decode("utf-8")})
                self.send_response(server.status)
                self.end_headers()

            do_POST = do_PUT = do_DELETE = _record

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def gateway(monkeypatch):
    server = FakePushgateway()
    monkeypatch.setenv(PUSHGATEWAY_ENV, server.url)
    yield server
    server.shutdown()
    server.server_close()


def pushed(request: dict) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(request["body"]) for s in family.samples}


def ingest_split(seconds: float = 0.0, fail: Exception | None = None) -> str:
    time.sleep(seconds)
    if fail is not None:
        raise fail
    return "done"


def test_a_stage_that_succeeds_pushes_its_duration_and_outcome(gateway, capsys):
    assert run_stage(ingest_split, seconds=0.2) == "done"
    (request,) = gateway.requests
    assert request["method"] == "POST"  # pushadd: replaces only the names pushed
    assert request["path"] == "/metrics/job/trainflow_stage/stage/ingest_split"
    assert request["headers"]["Content-Type"].startswith("text/plain; version=0.0.4")
    values = pushed(request)
    assert 0.2 <= values[("trainflow_stage_duration_seconds", ())] < 5
    assert {outcome: values[("trainflow_stage_outcome", (("outcome", outcome),))] for outcome in OUTCOMES} == {
        "succeeded": 1, "user_error": 0, "unavailable": 0, "failed": 0, "cancelled": 0}
    ran = values[("trainflow_stage_last_run_timestamp_seconds", ())]
    assert abs(ran - time.time()) < 60 and values[("trainflow_stage_last_success_timestamp_seconds", ())] == ran
    assert capsys.readouterr().err == ""


def test_a_user_error_is_pushed_as_such_and_keeps_the_last_success(gateway):
    with pytest.raises(SystemExit) as stopped:
        run_stage(ingest_split, fail=UserFacingError("table t.csv has no column 'y'"))
    assert stopped.value.code == USER_ERROR_EXIT_CODE
    values = pushed(gateway.requests[0])
    assert values[("trainflow_stage_outcome", (("outcome", "user_error"),))] == 1
    assert values[("trainflow_stage_outcome", (("outcome", "succeeded"),))] == 0
    assert not any(name == "trainflow_stage_last_success_timestamp_seconds" for name, _ in values)


def test_a_service_outage_exits_with_the_retried_code_and_is_pushed_as_unavailable(gateway, capsys):
    from trainflow.errors import ServiceUnavailableError
    from trainflow.exit_codes import SERVICE_UNAVAILABLE_EXIT_CODE

    with pytest.raises(SystemExit) as stopped:
        run_stage(ingest_split, fail=ServiceUnavailableError("the MLflow tracking store did not answer"))
    assert stopped.value.code == SERVICE_UNAVAILABLE_EXIT_CODE != USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err == "trainflow: ingest_split failed: the MLflow tracking store did not answer\n"
    assert pushed(gateway.requests[0])[("trainflow_stage_outcome", (("outcome", "unavailable"),))] == 1


def test_a_crash_is_pushed_as_failed_and_still_raises(gateway):
    with pytest.raises(RuntimeError, match="CUDA error"):
        run_stage(ingest_split, fail=RuntimeError("CUDA error"))
    assert pushed(gateway.requests[0])[("trainflow_stage_outcome", (("outcome", "failed"),))] == 1


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("kind", ["nothing listens", "answers 500", "never answers"])
def test_a_pushgateway_outage_is_one_warning_line_and_the_stage_succeeds(monkeypatch, capsys, kind):
    if kind == "nothing listens":
        port, cleanup = closed_port(), None
    elif kind == "answers 500":
        cleanup = FakePushgateway(status=500)
        port = cleanup.server_address[1]
    else:  # accepts the connection, never replies: the push must time out
        cleanup = socket.socket()
        cleanup.bind(("127.0.0.1", 0))
        cleanup.listen()
        port = cleanup.getsockname()[1]
    monkeypatch.setenv(PUSHGATEWAY_ENV, f"http://127.0.0.1:{port}")
    started = time.monotonic()
    try:
        assert run_stage(ingest_split) == "done"
    finally:
        if isinstance(cleanup, FakePushgateway):
            cleanup.shutdown()
        if cleanup is not None:
            cleanup.close() if isinstance(cleanup, socket.socket) else cleanup.server_close()
    assert time.monotonic() - started < 15
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"trainflow: warning: could not push stage metrics to the Pushgateway at 127.0.0.1:{port} (")
    assert lines[0].endswith("); the stage goes on")


def test_a_url_with_credentials_is_not_used_and_they_are_never_printed(monkeypatch, capsys, gateway):
    host_port = gateway.url.removeprefix("http://")
    monkeypatch.setenv(PUSHGATEWAY_ENV, f"http://pusher:s3cret-pa55@{host_port}")
    assert run_stage(ingest_split) == "done"
    assert gateway.requests == []
    err = capsys.readouterr().err
    assert "carries credentials" in err and "s3cret-pa55" not in err and "pusher" not in err


@pytest.mark.parametrize("value", ["ftp://gateway:21", "http://", "http://gateway:port"])
def test_a_url_that_is_not_http_is_one_warning(monkeypatch, capsys, value):
    monkeypatch.setenv(PUSHGATEWAY_ENV, value)
    assert run_stage(ingest_split) == "done"
    assert capsys.readouterr().err.count("trainflow: warning: TRAINFLOW_PUSHGATEWAY is not an http(s) URL") == 1


def test_without_a_pushgateway_nothing_is_pushed_or_printed(monkeypatch, capsys):
    monkeypatch.delenv(PUSHGATEWAY_ENV, raising=False)
    assert run_stage(ingest_split) == "done"
    assert capsys.readouterr().err == ""
