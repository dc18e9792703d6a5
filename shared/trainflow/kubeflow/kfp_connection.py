"""One checked, quiet kfp.Client per command, with server errors turned into one sentence.

The token comes from an environment variable (KFP_TOKEN, or the one --token-env names), never
from a command-line value that would land in shell history; it is never printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Iterator

from trainflow.errors import UserFacingError

DEFAULT_TOKEN_ENV = "KFP_TOKEN"
PROBE_TIMEOUT_S = 15
PORT_FORWARD_HINT = "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80"


@dataclass(frozen=True)
class KfpTarget:
    """Where to talk to: the KFP base URL (as the UI is served), a namespace for multi-user
    deployments (None on single-user ones) and the environment variable holding a bearer token."""

    host: str
    namespace: str | None = None
    token_env: str | None = None

    @property
    def base_url(self) -> str:
        return self.host.rstrip("/")

    def run_url(self, run_id: str) -> str:
        return f"{self.base_url}/#/runs/details/{run_id}"

    def recurring_run_url(self, recurring_run_id: str) -> str:
        return f"{self.base_url}/#/recurringrun/details/{recurring_run_id}"


def read_token(token_env: str | None) -> str | None:
    """The bearer token from `token_env` (default KFP_TOKEN), or None when the default is unset.

    Raises UserFacingError when a variable was named explicitly but is unset or empty.
    """
    value = os.environ.get(token_env or DEFAULT_TOKEN_ENV, "").strip()
    if token_env and not value:
        raise UserFacingError(
            f"--token-env names {token_env}, but that environment variable is unset or empty; "
            f"export it with your KFP bearer token first"
        )
    return value or None


@contextlib.contextmanager
def _quiet_kfp() -> Iterator[None]:
    # kfp.Client prints "... details: <link>" lines and warns on every construction, and urllib3
    # logs each connection retry; the verbs print their own single line instead.
    urllib3_logger = logging.getLogger("urllib3")
    level = urllib3_logger.level
    urllib3_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        urllib3_logger.setLevel(level)


def _server_message(body: object) -> str:
    try:
        payload = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return ""
    message = payload.get("message") or payload.get("error") if isinstance(payload, dict) else ""
    return f": {str(message).strip()[:300]}" if message else ""


def describe_http_error(target: KfpTarget, status: int | None, body: object = None) -> str:
    """One sentence for an HTTP error status from the KFP API, naming the fix."""
    where = f"the KFP API at {target.base_url}"
    if status == 401:
        return (f"{where} rejected the request as unauthenticated (HTTP 401); export a valid bearer token in "
                f"{target.token_env or DEFAULT_TOKEN_ENV} (or name another variable with --token-env)")
    if status == 403:
        return (f"{where} denied access (HTTP 403){_server_message(body)}; check that the token's user may use "
                f"namespace {target.namespace or '(none given: pass --namespace)'}")
    if status == 404:
        return (f"{target.base_url} has no KFP v2 API (HTTP 404 on /apis/v2beta1/...); pass the address the KFP UI "
                f"is served from as --host, e.g. http://localhost:8080 after `{PORT_FORWARD_HINT}`")
    return f"{where} answered HTTP {status}{_server_message(body)}"


def _describe_connection_error(target: KfpTarget, exc: Exception) -> str:
    import urllib3

    reason = getattr(exc, "reason", exc)
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return f"cannot resolve the host name in --host {target.base_url}; check the address"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return (f"cannot connect to {target.base_url} (connection refused); check --host, or start "
                f"`{PORT_FORWARD_HINT}` and use http://localhost:8080")
    if isinstance(reason, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return f"{target.base_url} did not answer in time; check --host and your network or VPN"
    return f"cannot reach {target.base_url} ({type(reason).__name__}); check --host and that the KFP API is up"


@contextlib.contextmanager
def kfp_errors_as_user_errors(target: KfpTarget) -> Iterator[None]:
    """Turn kfp_server_api HTTP errors and urllib3 connection errors into UserFacingError."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as exc:
        if exc.status == 0:  # raised for TLS failures, before any HTTP status exists
            raise UserFacingError(f"TLS connection to {target.base_url} failed; check the URL's scheme and the server certificate") from None
        raise UserFacingError(describe_http_error(target, exc.status, exc.body)) from None
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        raise UserFacingError(_describe_connection_error(target, exc)) from None


def _probe(target: KfpTarget, token: str | None) -> None:
    """One healthz call before kfp.Client exists: kfp.Client retries a failing healthz five times
    with five-second sleeps, so a wrong host or token would otherwise take half a minute."""
    import kfp_server_api

    configuration = kfp_server_api.Configuration(host=target.base_url)
    configuration.retries = 1
    if token:
        configuration.api_key["authorization"] = token
        configuration.api_key_prefix["authorization"] = "Bearer"
    api = kfp_server_api.HealthzServiceApi(kfp_server_api.ApiClient(configuration))
    response = api.healthz_service_get_healthz(_preload_content=False, _request_timeout=PROBE_TIMEOUT_S)
    try:
        health = json.loads(response.data)
    except ValueError:
        health = None
    if not isinstance(health, dict):  # typically a login page behind a redirect
        raise UserFacingError(
            f"{target.base_url} answered with a web page instead of the KFP API (often a login redirect); "
            f"export a bearer token in {target.token_env or DEFAULT_TOKEN_ENV}, or check --host"
        )
    if health.get("multi_user") and not target.namespace:
        raise UserFacingError(
            f"the KFP at {target.base_url} runs in multi-user mode; pass --namespace with your profile's namespace"
        )


@contextlib.contextmanager
def connected_client(target: KfpTarget) -> Iterator["kfp.Client"]:  # noqa: F821 (kfp is imported lazily)
    """A kfp.Client for `target` after a health check; its output is silenced and its errors are
    UserFacingError (connection refused, 401, 403, 404, other statuses), each one sentence."""
    if not target.host.startswith(("http://", "https://")):
        raise UserFacingError(f"--host {target.host!r} must start with http:// or https://")
    token = read_token(target.token_env)
    with kfp_errors_as_user_errors(target), _quiet_kfp():
        import kfp

        _probe(target, token)
        # namespace="kubeflow" is kfp.Client's own "not given" value
        yield kfp.Client(host=target.base_url, existing_token=token, namespace=target.namespace or "kubeflow")
