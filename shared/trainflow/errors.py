"""The one exception type a user is meant to read.

Stages raise `UserFacingError` for anything the user can fix (a bad config field,
a missing file, missing weights). The CLI prints its message as one sentence and
exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserFacingError(Exception):
    """An error caused by input the user controls; the message says what to do."""


class ConfigError(UserFacingError):
    """The run configuration is invalid; the message names the field."""


class MissingWeightsError(UserFacingError):
    """Pretrained weights a stage needs are not on disk (no downloads happen here)."""
