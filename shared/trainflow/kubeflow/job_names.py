"""Deterministic training-job names, so a restarted launcher finds its job instead of making another.

The name is derived from the KFP run and task. A component gets them from placeholders that the
KFP backend (and kfp.local) substitute at run time: `dsl.PIPELINE_JOB_ID_PLACEHOLDER`
(`{{$.pipeline_job_uuid}}`, the run UUID) and `dsl.PIPELINE_TASK_NAME_PLACEHOLDER`
(`{{$.pipeline_task_name}}`) or `dsl.PIPELINE_TASK_ID_PLACEHOLDER` (`{{$.pipeline_task_uuid}}`).
On the Argo backend the driver runs once per task and every retry of the executor pod receives the
same executor input, so all three stay the same across retries of one task; use the task id rather
than the name inside a ParallelFor, where iterations share a task name.

Names are RFC 1035 labels (lower-case letters, digits and '-', starting with a letter), which both
CRDs accept, and at most 40 characters: the operators derive longer names from them
(`<name>-worker-12` for a PyTorchJob's pods and services, `<name>-node-0-0` for a TrainJob's
JobSet pods and hostnames) that must stay within Kubernetes' 63-character label limit.
"""

from __future__ import annotations

import hashlib
import re

from trainflow.errors import ConfigError

MAX_JOB_NAME_LENGTH = 40
_HASH_LENGTH = 10


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def _check_resolved(value: str, what: str) -> None:
    if not value.strip():
        raise ConfigError(f"the KFP {what} for the training job name is empty; pass the KFP placeholder's value.")
    if "{{" in value:
        raise ConfigError(f"the KFP {what} {value!r} is an unsubstituted placeholder; pass it to the component "
                          "as a parameter default (e.g. dsl.PIPELINE_JOB_ID_PLACEHOLDER) so KFP fills it in.")


def training_job_name(run_id: str, task: str, prefix: str = "trainflow") -> str:
    """The one job name for this (KFP run, task): same inputs, same name, on every retry.

    Inputs: the KFP run UUID, the task name (or task UUID), and a readable prefix that starts
    with a letter. Output: `<prefix>-<task slug>-<10 hex chars of sha256(run, task)>`, with the slug
    shortened so the whole name is at most 40 characters. Failure: ConfigError if the run or task
    is empty or still an unsubstituted `{{...}}` placeholder, or the prefix is not usable.
    """
    _check_resolved(run_id, "run id")
    _check_resolved(task, "task name")
    clean_prefix = _slug(prefix)
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,19}", clean_prefix):
        raise ConfigError(f"job name prefix {prefix!r} must start with a letter and have at most 20 "
                          "letters, digits or '-'.")
    digest = hashlib.sha256(f"{run_id}\0{task}".encode()).hexdigest()[:_HASH_LENGTH]
    room = MAX_JOB_NAME_LENGTH - len(clean_prefix) - len(digest) - 2
    task_slug = _slug(task)[:room].strip("-")
    parts = [clean_prefix, task_slug, digest] if task_slug else [clean_prefix, digest]
    return "-".join(parts)


def is_job_name(name: str) -> bool:
    """Whether `name` is an RFC 1035 label of at most 40 characters (what training_job_name makes)."""
    return len(name) <= MAX_JOB_NAME_LENGTH and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) is not None
