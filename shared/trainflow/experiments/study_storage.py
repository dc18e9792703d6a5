"""Where a study lives: Optuna's journal file on the workspace, or a database whose URL the environment holds.

    <root>/tuning/<study name>/
        journal.log            the study (kind journal): every ask, report and tell, appended under a file lock
        study.json             what the workers share: the run config, the cache, the budget (trainflow writes it)
        trials/<slot>/         one folder per trial slot: checkpoints/, model/, heartbeat.json, train.log
        data/                  the split and cache every trial reads (local runs)

A database URL (kind rdb) carries credentials, so it is never a parameter: it is read from the environment
variable `tune.storage.url_env`, which a cluster pipeline fills from a Kubernetes Secret. Printed URLs are redacted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import optuna

from trainflow.config.tuning import TuneConfig
from trainflow.contained_paths import path_inside
from trainflow.errors import ConfigError, UserFacingError
from trainflow.redaction import redact_text

JOURNAL_FILE = "journal.log"


def study_folder(root: str | Path, study_name: str) -> Path:
    """<root>/tuning/<study name>; UserFacingError if it would lead out of `root`."""
    return path_inside(root, "tuning", study_name)


def storage_url(tune: TuneConfig) -> str:
    """The database URL from the environment (kind rdb); ConfigError naming the variable when unset."""
    name = tune.storage.url_env
    url = os.environ.get(name, "").strip()
    if not url:
        where = (f"the Kubernetes Secret {tune.storage.secret!r} (key {tune.storage.secret_key!r})"
                 if tune.storage.secret else "a Kubernetes Secret (tune.storage.secret) or your shell")
        raise ConfigError(f"tune.storage: kind rdb reads the database URL from the environment variable {name}, "
                          f"which is not set; set it from {where}, never in the config")
    return url


def describe_storage(tune: TuneConfig, folder: Path) -> str:
    if tune.storage.kind == "journal":
        return f"journal {folder / JOURNAL_FILE}"
    return f"database {redact_text(storage_url(tune))}"


def mend_journal(path: Path, lock: optuna.storages.journal.BaseJournalFileLock) -> None:
    """Cut a torn last entry from the journal; UserFacingError naming the line when an earlier one is damaged.

    A writer stopped mid-append (a full disk, a killed worker on a network file system) leaves a last line
    without its newline. Optuna skips it when reading, but its next append would land right after the
    fragment, making a line no reader can parse: the whole study, every finished trial, unreadable. Cut under
    the journal's own lock, so no live writer is mid-append. The cut entry's trial (its tell was lost) stays
    RUNNING and is re-queued like any trial whose worker stopped.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return
    lock.acquire()
    try:
        data = path.read_bytes()
        whole = data.rfind(b"\n") + 1
        for number, line in enumerate(data[:whole].splitlines(), start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict):
                raise UserFacingError(
                    f"the study journal {path} is damaged at line {number} (not an Optuna journal entry); restore "
                    "it from a copy, or start a new study with another tune.study_name")
        if whole < len(data):
            with path.open("r+b") as journal:
                journal.truncate(whole)
                journal.flush()
                os.fsync(journal.fileno())
            print(f"tune: {path}: cut a torn last entry ({len(data) - whole} bytes) left by a stopped writer; "
                  "its trial is re-queued if it was running", file=sys.stderr, flush=True)
    finally:
        lock.release()


def open_storage(tune: TuneConfig, folder: Path) -> optuna.storages.BaseStorage:
    """The study's storage; UserFacingError (URL redacted) when the database cannot be reached."""
    if tune.storage.kind == "journal":
        folder.mkdir(parents=True, exist_ok=True)
        path = str(folder / JOURNAL_FILE)
        # The open(O_EXCL) lock works on NFS-like workspaces, where symlink locks may not.
        lock = optuna.storages.journal.JournalFileOpenLock(path)
        mend_journal(Path(path), lock)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path, lock_obj=lock))
    url = storage_url(tune)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:  # sqlalchemy/driver errors: one line, with the URL redacted
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserFacingError(f"cannot open the Optuna database {redact_text(url)}: "
                              f"{redact_text(first_line.replace(url, redact_text(url)))}") from None
