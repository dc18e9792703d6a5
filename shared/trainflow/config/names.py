"""Config values that become names and paths, checked at load against what their consumers accept.

Each rule is the tightest of the places the value goes, so a bad name fails in `validate` with one
sentence instead of in a stage after training:
- run_name: a folder under the state directory (checkpoints/<run_name>, cross-validation/<run_name>),
  the default Optuna study and its folder, the MLflow run name, and KFP run and schedule names
  (<run_name>-<UTC time>);
- register.model_name: an MLflow registered model (no '/' or ':', a unique path) and models:/<name>@<alias>;
- register.experiment: an MLflow experiment (at most 500 characters) and the default KFP experiment;
- Kubernetes object names (Secrets, service accounts, runtimes): DNS-1123 subdomains, label keys and values;
- local paths: no NUL byte (the OS refuses them with an exception, not a message), at most 4096 characters,
  and a dataset is never read from / or a system folder (see `check_dataset_location`).
"""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import AfterValidator

# A path component that cannot be '.', '..' or hidden, holds no separator, and reads the same in a URL,
# a Kubernetes annotation and a shell.
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
MAX_PATH_CHARACTERS = 4096  # Linux PATH_MAX
MAX_RUN_NAME = 100  # leaves room for KFP's '-<UTC time>' and MLflow's 250-character run names
MAX_MODEL_NAME = 200  # MLflow's registry column holds 256
MAX_EXPERIMENT_NAME = 500  # MLflow's own limit

# Folders a dataset is never read from: / and the system's own folders hold no datasets, and walking
# them reads the whole machine; the pseudo-filesystems (/proc, /sys, /dev, /run) also hold files that
# never end or block when read, so nothing inside them is a dataset either.
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                  "/run", "/sbin", "/sys", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/usr/sbin", "/var",
                  "/var/lib", "/var/log", "/var/run")
PSEUDO_FILESYSTEMS = ("/dev", "/proc", "/run", "/sys")


def path_component_name(what: str, value: str, limit: int) -> str:
    """`value` if it is a safe single path component of at most `limit` characters; ValueError otherwise."""
    if not _PATH_COMPONENT.fullmatch(value) or len(value) > limit:
        raise ValueError(f"{what} must start with a letter or digit and hold only letters, digits, '.', '_' and "
                         f"'-' (at most {limit} characters), because it becomes a folder name and an MLflow/KFP name")
    return value


def check_run_name(value: str) -> str:
    return path_component_name("run_name", value, MAX_RUN_NAME)


def check_model_name(value: str) -> str:
    return path_component_name("model_name", value, MAX_MODEL_NAME)


def check_experiment_name(value: str) -> str:
    if not value.strip() or not value.isprintable() or value != value.strip() or len(value) > MAX_EXPERIMENT_NAME:
        raise ValueError(f"experiment must be printable text without leading or trailing spaces, 1 to "
                         f"{MAX_EXPERIMENT_NAME} characters (MLflow's limit)")
    return value


def check_champion_alias(value: str) -> str:
    if value.lower() == "latest" or re.fullmatch(r"[vV]\d+", value) or len(value) > 255:
        raise ValueError("champion_alias cannot be 'latest' or v<number> (MLflow reserves them) or longer than 255 "
                         "characters")
    return value


def check_kubernetes_name(value: str | None) -> str | None:
    """A Secret, service account or runtime name: a DNS-1123 subdomain (lower case, at most 253 characters)."""
    if value and (len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value)):
        raise ValueError("must be a Kubernetes object name: lower-case letters, digits, '-' and '.', starting and "
                         "ending with a letter or digit, at most 253 characters")
    return value


def check_secret_key(value: str) -> str:
    if len(value) > 253 or not _SECRET_KEY.fullmatch(value):
        raise ValueError("must be a Kubernetes Secret key: letters, digits, '-', '_' and '.', at most 253 characters")
    return value


def check_label_key(key: str) -> str:
    """A Kubernetes label key: [prefix/]name, the name at most 63 characters, the prefix a DNS subdomain."""
    prefix, _, name = key.rpartition("/")
    if (not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name)
            or (prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)))):
        raise ValueError(f"{key[:100]!r} is not a Kubernetes label key ([prefix/]name, the name at most 63 letters, "
                         "digits, '-', '_' or '.')")
    return key


def check_label_value(value: str) -> str:
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        raise ValueError(f"{value[:100]!r} is not a Kubernetes label value (at most 63 letters, digits, '-', '_' or "
                         "'.', starting and ending with a letter or digit)")
    return value


def check_path_text(value: str) -> str:
    """A path as text: no NUL byte, no line break, at most 4096 characters (what open() and a log line accept)."""
    if "\x00" in value or "\n" in value or "\r" in value:
        raise ValueError("a path cannot hold a NUL byte or a line break")
    if len(value) > MAX_PATH_CHARACTERS:
        raise ValueError(f"a path has at most {MAX_PATH_CHARACTERS} characters")
    return value


def check_plain_text(value: str) -> str:
    """Text that goes into a pod spec or an environment variable: no NUL byte, at most 4096 characters."""
    if "\x00" in value or len(value) > MAX_PATH_CHARACTERS:
        raise ValueError(f"cannot hold a NUL byte or more than {MAX_PATH_CHARACTERS} characters")
    return value


PathText = Annotated[str, AfterValidator(check_path_text)]
PlainText = Annotated[str, AfterValidator(check_plain_text)]


def check_dataset_location(field: str, value: str, is_folder: bool) -> None:
    """ValueError when a dataset path is /, a system folder, or inside a pseudo-filesystem (symlinks followed).

    `is_folder`: the value is the dataset's root folder (dataset_dir) rather than a file in it (table,
    hdf5), whose folder is then the root that image paths in a table are resolved against.
    """
    resolved = os.path.realpath(os.path.expanduser(value))
    root = resolved if is_folder else os.path.dirname(resolved)
    if root in ("/", *SYSTEM_FOLDERS) or any(resolved == fs or resolved.startswith(fs + "/")
                                             for fs in PSEUDO_FILESYSTEMS):
        raise ValueError(f"{field}: {value[:200]!r} is / or a system folder ({root}); put the dataset in a folder "
                         "of its own (trainflow reads every file under a dataset's folder)")
