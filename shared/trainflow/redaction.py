"""Credentials in URIs: replaced by *** wherever a value is recorded, and carried to child processes in the environment.

A tracking URI such as `http://user:password@host` or a storage URL with `?sig=...` carries a secret.
`redact` is the one function that hides them; it is applied where values are recorded (the run
summary, reports and artifact metadata, MLflow params and tags, printed errors and stage logs).
`split_credentials` takes user:password out of a tracking URI before it becomes a KFP parameter
(parameters are on the stage's command line and in kfp.local's records); the local runner puts them
into the stages' environment as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, which MLflow's
REST client reads itself (mlflow.environment_variables), and `uri_with_environment_credentials`
puts them back into a database URI (postgresql://...), whose driver only reads them from the URI.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Iterator
from urllib.parse import quote, unquote, urlsplit, urlunsplit

MASK = "***"
USERNAME_VARIABLE, PASSWORD_VARIABLE = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
# Query parameters that carry a secret in the URLs people paste: tokens, SAS signatures, presigned S3 URLs.
SECRET_QUERY_KEYS = ("access_token", "api_key", "apikey", "auth", "client_secret", "code", "key", "password",
                     "passwd", "pwd", "secret", "sig", "signature", "token", "x-amz-credential",
                     "x-amz-security-token", "x-amz-signature", "x-goog-credential", "x-goog-signature")
# scheme://userinfo@ : the userinfo runs to the last '@' before the path, as urllib reads it.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s'\"<>]*)@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&;](?:%s)=)(?P<value>[^&#\s'\"<>]*)" % "|".join(re.escape(key) for key in SECRET_QUERY_KEYS),
                           re.IGNORECASE)
# Database schemes whose drivers read credentials only from the URI (MLflow's REST client reads the environment).
_DATABASE_SCHEMES = ("postgresql", "postgres", "mysql", "mssql", "oracle")


def redact_text(text: str) -> str:
    """`text` with every URI's user:password and every secret query value replaced by ***."""
    if "@" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda match: f"{match.group('scheme')}{MASK}@", text)
    return _SECRET_QUERY.sub(lambda match: f"{match.group('key')}{MASK}", text)


def redact(value: Any) -> Any:
    """A copy of `value` (text, or dicts, lists and tuples of them) with credentials replaced by ***; other values as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact(key): redact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item) for item in value)
    return value


def has_credentials(uri: str | None) -> bool:
    """Whether `uri` shows a user:password or a secret query value."""
    return bool(uri) and redact_text(uri) != uri


def has_secret_query(uri: str) -> bool:
    return bool(_SECRET_QUERY.search(uri))


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """(the URI without user:password, {MLFLOW_TRACKING_USERNAME: ..., MLFLOW_TRACKING_PASSWORD: ...}).

    The variables are empty when the URI has no user info. Secret query values stay in the URI
    (they are not MLflow's to read from the environment); `redact` hides them where recorded.
    """
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, {}
    userinfo, _, host = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    environment = {USERNAME_VARIABLE: unquote(username)}
    if password:
        environment[PASSWORD_VARIABLE] = unquote(password)
    return urlunsplit(parts._replace(netloc=host)), environment


def uri_with_environment_credentials(uri: str) -> str:
    """A database URI with the user and password from the environment put back in; other URIs unchanged.

    For a client in this process only: the result is never recorded or passed on.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0].lower()
    username = os.environ.get(USERNAME_VARIABLE)
    if scheme not in _DATABASE_SCHEMES or not username or "@" in parts.netloc:
        return uri
    password = os.environ.get(PASSWORD_VARIABLE)
    userinfo = quote(username, safe="") + (f":{quote(password, safe='')}" if password else "")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


@contextlib.contextmanager
def environment_variables(values: dict[str, str]) -> Iterator[None]:
    """Set `values` in os.environ (child processes inherit them) for the block; restore what was there after."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in previous.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
