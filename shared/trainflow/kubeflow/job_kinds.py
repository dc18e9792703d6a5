"""The two kinds of distributed training job, as the launcher needs to know them.

For each backend: where the custom resource lives in the API, which pod is rank 0 and what its
container is called, and how to read the job's status into one phase.

PyTorchJob (kubeflow.org/v1, Training Operator v1.7+): pods are labelled
`training.kubeflow.org/job-name`, `training.kubeflow.org/replica-type` (lower-case `master` /
`worker`) and `training.kubeflow.org/replica-index`; rank 0 is master 0, container `pytorch`.
Status conditions are Created, Running, Restarting, Suspended, Succeeded and Failed.

TrainJob (trainer.kubeflow.org/v1alpha1, Trainer v2): the Trainer creates a JobSet of the same
name whose replicated job `node` runs one indexed Job pod per node, container `node`. Pods carry
`jobset.sigs.k8s.io/jobset-name`, `jobset.sigs.k8s.io/replicatedjob-name` and
`batch.kubernetes.io/job-completion-index` (the node rank, which PET_NODE_RANK is read from) —
the same labels the Kubeflow SDK selects on. TrainJob conditions are only Suspended, Complete and
Failed (copied from the JobSet); "running" is read from `status.jobsStatus` counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from trainflow.errors import ConfigError


@dataclass(frozen=True)
class JobPhase:
    """Where a job stands: `name` for people, plus whether it ended and how."""

    name: str
    finished: bool = False
    succeeded: bool = False
    reason: str = ""
    message: str = ""


def _true_conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {condition.get("type"): condition for condition in status.get("conditions") or []
            if condition.get("status") == "True"}


def pytorchjob_phase(job: dict[str, Any]) -> JobPhase:
    """Read a PyTorchJob's conditions into a phase (the newest true condition wins)."""
    conditions = _true_conditions(job.get("status") or {})
    for terminal, succeeded in (("Succeeded", True), ("Failed", False)):
        if terminal in conditions:
            condition = conditions[terminal]
            return JobPhase(terminal, True, succeeded, condition.get("reason", ""), condition.get("message", ""))
    for current in ("Suspended", "Restarting", "Running", "Created"):
        if current in conditions:
            return JobPhase(current, reason=conditions[current].get("reason", ""),
                            message=conditions[current].get("message", ""))
    return JobPhase("Pending")


def trainjob_phase(job: dict[str, Any]) -> JobPhase:
    """Read a TrainJob's conditions (Complete/Failed/Suspended) and child-job counts into a phase."""
    status = job.get("status") or {}
    conditions = _true_conditions(status)
    for terminal, succeeded in (("Complete", True), ("Failed", False)):
        if terminal in conditions:
            condition = conditions[terminal]
            return JobPhase(terminal, True, succeeded, condition.get("reason", ""), condition.get("message", ""))
    if "Suspended" in conditions:
        return JobPhase("Suspended", reason=conditions["Suspended"].get("reason", ""))
    jobs = status.get("jobsStatus") or []
    if any((child.get("active") or 0) > 0 or (child.get("ready") or 0) > 0 for child in jobs):
        return JobPhase("Running")
    return JobPhase("Created" if jobs else "Pending")


@dataclass(frozen=True)
class JobKind:
    """One backend: its API coordinates, its rank-0 pod, and how to read its status."""

    backend: str
    group: str
    version: str
    plural: str
    kind: str
    rank0_container: str
    rank0_labels: Callable[[str], dict[str, str]]
    read_phase: Callable[[dict[str, Any]], JobPhase]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def resource(self) -> str:
        """The name RBAC and error messages use, e.g. 'pytorchjobs.kubeflow.org'."""
        return f"{self.plural}.{self.group}"

    def rank0_selector(self, job_name: str) -> str:
        """A label selector (equality terms only) that matches the rank-0 pod of `job_name`."""
        return ",".join(f"{key}={value}" for key, value in self.rank0_labels(job_name).items())


PYTORCHJOB = JobKind(
    backend="pytorchjob", group="kubeflow.org", version="v1", plural="pytorchjobs", kind="PyTorchJob",
    rank0_container="pytorch",
    rank0_labels=lambda name: {"training.kubeflow.org/job-name": name,
                               "training.kubeflow.org/replica-type": "master",
                               "training.kubeflow.org/replica-index": "0"},
    read_phase=pytorchjob_phase,
)

TRAINJOB = JobKind(
    backend="trainjob", group="trainer.kubeflow.org", version="v1alpha1", plural="trainjobs", kind="TrainJob",
    rank0_container="node",
    rank0_labels=lambda name: {"jobset.sigs.k8s.io/jobset-name": name,
                               "jobset.sigs.k8s.io/replicatedjob-name": "node",
                               "batch.kubernetes.io/job-completion-index": "0"},
    read_phase=trainjob_phase,
)

JOB_KINDS = {kind.backend: kind for kind in (PYTORCHJOB, TRAINJOB)}


def job_kind(backend: str) -> JobKind:
    """The JobKind for 'pytorchjob' or 'trainjob'; ConfigError for anything else."""
    if backend not in JOB_KINDS:
        raise ConfigError(f"distributed backend {backend!r} is not one of {sorted(JOB_KINDS)}; "
                          "use 'pytorchjob' (Training Operator v1) or 'trainjob' (Trainer v2).")
    return JOB_KINDS[backend]
