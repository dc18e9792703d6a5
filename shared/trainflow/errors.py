"""The one exception type a user is meant to read.

Stages raise `UserFacingError` for anything the user can fix (a bad config field,
a missing file, missing weights). The CLI prints its message as one sentence and
exits non-zero; anything else is a bug and keeps its traceback. `ServiceUnavailableError`
is the one kind a retry can fix (a server that did not answer): one sentence like any
user error, but a different exit code so the stage's retry policy runs it again.
"""


class UserFacingError(Exception):
    """An error caused by input the user controls; the message says what to do."""


class ConfigError(UserFacingError):
    """The run configuration is invalid; the message names the field."""


class MissingWeightsError(UserFacingError):
    """Pretrained weights a stage needs are not on disk (no downloads happen here)."""


class ServiceUnavailableError(UserFacingError):
    """A service the stage needs (a tracking server, a database) did not answer after the stage's own retries.

    Shown as one sentence like any UserFacingError, but the stage exits with SERVICE_UNAVAILABLE_EXIT_CODE,
    which the pipeline's retry policy (in KFP and in a local run) retries: an outage may be over by then.
    """
