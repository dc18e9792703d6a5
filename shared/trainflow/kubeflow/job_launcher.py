"""Run one distributed training job on the cluster and bring its model back as Output[Model].

`JobLauncher.run` does, in order:
1. check that the request file and the output folder lie on a volume the training pods mount;
2. build and validate the PyTorchJob/TrainJob; look the job name up: if it exists (a restarted
   launcher, e.g. a retried KFP task), attach to it and leave the request file alone; otherwise
   write the request atomically and create the job (a 409 from a concurrent create also attaches);
3. poll the job's status with backoff, print each phase change and the rank-0 log as it grows;
4. on failure raise TrainingJobFailed with the operator's reason and message and the last rank-0
   log lines; on success copy `<output_dir>` (which rank 0 finished with trainflow_training.json)
   into the Output[Model] folder atomically;
5. delete the job when `delete_on_exit` is set — after success, failure, timeout or Ctrl-C — so
   that a retry starts a fresh job that resumes from the workspace checkpoints.
A job that exists but was not made by trainflow is never adopted or deleted. Re-attaching to a job
that already failed reports that failure again; with delete_on_exit (the default) a failed job is
gone before the retry, so a retried task starts a new job that resumes from the checkpoints. One
that is still being deleted is waited out first.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from trainflow.atomic_files import atomic_directory, atomic_write_json
from trainflow.errors import ConfigError, UserFacingError
from trainflow.kubeflow.cluster_api import ClusterAccessError, api_error
from trainflow.kubeflow.distributed_spec import DistributedTrainingSpec
from trainflow.kubeflow.job_kinds import JobPhase, job_kind
from trainflow.kubeflow.job_specs import JOB_LABELS, build_job
from trainflow.kubeflow.pod_logs import Rank0LogFollower

TRAINING_SUMMARY_FILE = "trainflow_training.json"
_MAX_STATUS_FAILURES = 5  # consecutive failed status reads tolerated (API server restarts, network blips)


class TrainingJobFailed(UserFacingError):
    """The training job ended Failed (or vanished); the message carries the operator's reason and the log tail."""


class TrainingJobTimeout(UserFacingError):
    """The training job did not finish within the launcher's timeout."""


@dataclass(frozen=True)
class TrainingJobResult:
    """What a finished run left: the job, whether this launcher created it, and rank 0's summary."""

    job_name: str
    kind: str
    created: bool
    phase: JobPhase
    model_dir: Path
    training_summary: dict[str, Any]


class JobLauncher:
    """Creates (or re-attaches to) one PyTorchJob/TrainJob, follows it to the end, collects the model.

    Inputs: the spec; a kubernetes ApiClient (`cluster_api.kubernetes_api_client`); polling
    interval (grows ×1.5 to `max_poll_interval_s` while nothing changes); `timeout_s` for the
    whole wait (None = wait as long as the job runs; bound it server-side with
    active_deadline_seconds); `emit` receives every status and log line (print by default).
    """

    def __init__(self, spec: DistributedTrainingSpec, api_client: k8s.ApiClient, *,
                 poll_interval_s: float = 5.0, max_poll_interval_s: float = 60.0, timeout_s: float | None = None,
                 emit: Callable[[str], None] = lambda line: print(line, flush=True),
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.spec, self.kind = spec, job_kind(spec.backend)
        self._objects, self._core = k8s.CustomObjectsApi(api_client), k8s.CoreV1Api(api_client)
        self._poll_interval_s, self._max_poll_interval_s, self._timeout_s = poll_interval_s, max_poll_interval_s, timeout_s
        self._emit, self._sleep, self._clock = emit, sleep, clock

    def run(self, job_name: str, request: dict[str, Any], request_path: Path, model_dir: Path) -> TrainingJobResult:
        """Train on the cluster and fill `model_dir` (the Output[Model] path) with rank 0's model folder.

        Inputs: the job name (`job_names.training_job_name`), the engine's request (must name an
        absolute `output_dir` on a writable shared volume), where to write it (on a shared
        volume, the path the spec's command passes to the worker), and the Output[Model] folder.
        Output: TrainingJobResult with rank 0's trainflow_training.json. Failures: ConfigError
        for paths off the shared volumes; ClusterAccessError for API access problems;
        TrainingJobFailed; TrainingJobTimeout; UserFacingError if the model folder is incomplete.
        """
        output_dir = self._check_paths(request, Path(request_path))
        body = build_job(self.spec, job_name)
        attached = False
        try:
            created = self._create_or_attach(body, request, Path(request_path))
            attached = True
            phase = self._wait(job_name)
            summary = self._collect_model(job_name, output_dir, Path(model_dir))
            return TrainingJobResult(job_name, self.kind.kind, created, phase, Path(model_dir), summary)
        finally:
            if attached and self.spec.delete_on_exit:
                self._delete_quietly(job_name)

    def _check_paths(self, request: dict[str, Any], request_path: Path) -> Path:
        output_dir = request.get("output_dir") if isinstance(request, dict) else None
        if not isinstance(output_dir, str) or not Path(output_dir).is_absolute():
            raise ConfigError(f"the training request must name an absolute 'output_dir' on the shared workspace, "
                              f"got {output_dir!r}.")
        if self.spec.mount_holding(request_path) is None:
            raise ConfigError(f"the training request {request_path} is not on any volume the training pods mount "
                              f"({self._mount_list()}); write it under the shared workspace.")
        if self.spec.mount_holding(output_dir, writable=True) is None:
            raise ConfigError(f"the training output_dir {output_dir} is not on a writable volume the training pods "
                              f"mount ({self._mount_list()}); put it under the shared workspace.")
        return Path(output_dir)

    def _mount_list(self) -> str:
        return ", ".join(f"{m.claim_name} at {m.mount_path}" for m in self.spec.volumes) or "none configured"

    def _api(self, action: str, name: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except ApiException as error:
            raise api_error(error, action, self.kind, name, self.spec.namespace) from None
        except HTTPError as error:
            raise ClusterAccessError(f"cannot reach the Kubernetes API to {action} {self.kind.kind} {name}: "
                                     f"{error}; check the cluster address and network.") from None

    def _get(self, name: str) -> dict[str, Any] | None:
        kind = self.kind
        try:
            return self._objects.get_namespaced_custom_object(kind.group, kind.version, self.spec.namespace,
                                                              kind.plural, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _create_or_attach(self, body: dict[str, Any], request: dict[str, Any], request_path: Path) -> bool:
        name, kind = body["metadata"]["name"], self.kind
        existing = self._api("get", name, lambda: self._get(name))
        if existing is not None and existing.get("metadata", {}).get("deletionTimestamp"):
            self._emit(f"{kind.kind} {name} from an earlier attempt is being deleted; waiting for it to go.")
            self._wait_until_gone(name)
            existing = None
        if existing is not None:
            self._check_ours(existing)
            self._emit(f"Re-attaching to {kind.kind} {name} in namespace {self.spec.namespace}.")
            return False
        atomic_write_json(request_path, request)
        try:
            self._objects.create_namespaced_custom_object(kind.group, kind.version, self.spec.namespace,
                                                          kind.plural, body)
        except ApiException as error:
            if error.status != 409:
                raise api_error(error, "create", kind, name, self.spec.namespace) from None
            self._emit(f"{kind.kind} {name} was created meanwhile by another launcher; attaching to it.")
            return False
        except HTTPError as error:
            raise ClusterAccessError(f"cannot reach the Kubernetes API to create {kind.kind} {name}: {error}.") from None
        gpus = f"{self.spec.gpus_per_node} GPU(s)" if self.spec.gpus_per_node else "CPU only"
        self._emit(f"Created {kind.kind} {name} in namespace {self.spec.namespace}: "
                   f"{self.spec.nodes} node(s), {gpus} each.")
        return True

    def _check_ours(self, existing: dict[str, Any]) -> None:
        labels = existing.get("metadata", {}).get("labels") or {}
        if any(labels.get(key) != value for key, value in JOB_LABELS.items()):
            name = existing.get("metadata", {}).get("name")
            raise UserFacingError(f"a {self.kind.kind} named {name} already exists in namespace "
                                  f"{self.spec.namespace} but was not made by trainflow; delete or rename it.")

    def _wait_until_gone(self, name: str) -> None:
        deadline = self._clock() + max(60.0, 20 * self._poll_interval_s)
        while self._api("get", name, lambda: self._get(name)) is not None:
            if self._clock() > deadline:
                raise ClusterAccessError(f"{self.kind.kind} {name} is still being deleted; a finalizer may be "
                                         "stuck — check it with kubectl and retry.")
            self._sleep(self._poll_interval_s)

    def _read_status(self, name: str, failures: int) -> tuple[dict[str, Any] | None, int]:
        try:
            job = self._get(name)
        except (ApiException, HTTPError) as error:
            if isinstance(error, ApiException) and error.status in (401, 403):
                raise api_error(error, "get", self.kind, name, self.spec.namespace) from None
            if failures + 1 >= _MAX_STATUS_FAILURES:
                if isinstance(error, ApiException):
                    raise api_error(error, "get", self.kind, name, self.spec.namespace) from None
                raise ClusterAccessError(f"lost the Kubernetes API while following {self.kind.kind} {name}: "
                                         f"{error}.") from None
            return None, failures + 1
        if job is None:
            raise TrainingJobFailed(f"{self.kind.kind} {name} disappeared from namespace {self.spec.namespace} "
                                    "while running; someone deleted it, so the training result is unknown.")
        return job, 0

    def _wait(self, name: str) -> JobPhase:
        follower = Rank0LogFollower(self._core, self.spec.namespace, self.kind.rank0_selector(name),
                                    self.kind.rank0_container, self._emit)
        started, interval, failures, last = self._clock(), self._poll_interval_s, 0, None
        while True:
            job, failures = self._read_status(name, failures)
            if job is not None:
                phase = self.kind.read_phase(job)
                if phase.name != last:
                    because = f" ({phase.reason})" if phase.reason and phase.name not in ("Created", "Running") else ""
                    self._emit(f"{self.kind.kind} {name}: {phase.name}{because}")
                    last, interval = phase.name, self._poll_interval_s
                follower.poll()
                if phase.finished:
                    if not phase.succeeded:
                        raise self._failure(name, phase, list(follower.last_lines))
                    return phase
            if self._timeout_s is not None and self._clock() - started > self._timeout_s:
                raise TrainingJobTimeout(f"{self.kind.kind} {name} did not finish within {self._timeout_s:g} s "
                                         f"(last phase: {last or 'unknown'}); raise the launcher timeout or "
                                         "check the job with kubectl.")
            self._sleep(interval)
            interval = min(interval * 1.5, self._max_poll_interval_s)

    def _failure(self, name: str, phase: JobPhase, log_tail: list[str]) -> TrainingJobFailed:
        why = ": ".join(part for part in (phase.reason, phase.message) if part) or "no reason given"
        tail = ("\nLast lines of the rank-0 log:\n" + "\n".join(f"  {line}" for line in log_tail)
                if log_tail else "\n(No rank-0 log could be read.)")
        return TrainingJobFailed(f"{self.kind.kind} {name} failed: {why}.{tail}")

    def _collect_model(self, name: str, output_dir: Path, model_dir: Path) -> dict[str, Any]:
        summary_path = output_dir / TRAINING_SUMMARY_FILE
        if not summary_path.is_file():
            raise UserFacingError(f"{self.kind.kind} {name} succeeded but {summary_path} is missing, so the model "
                                  "folder is incomplete; check the rank-0 log above.")
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise UserFacingError(f"{summary_path} is not valid JSON ({error}); the training run did not finish "
                                  "writing it.") from None
        with atomic_directory(model_dir) as staging:
            shutil.copytree(output_dir, staging, dirs_exist_ok=True)
        self._emit(f"Copied the trained model from {output_dir} to {model_dir}.")
        return summary

    def _delete_quietly(self, name: str) -> None:
        """Delete the job (and, through garbage collection, its pods); never hides the run's own outcome."""
        kind = self.kind
        try:
            self._objects.delete_namespaced_custom_object(kind.group, kind.version, self.spec.namespace, kind.plural,
                                                          name, propagation_policy="Background")
            self._emit(f"Deleted {kind.kind} {name}.")
        except ApiException as error:
            if error.status != 404:
                self._emit(f"Could not delete {kind.kind} {name}: {api_error(error, 'delete', kind, name, self.spec.namespace)}")
        except HTTPError as error:
            self._emit(f"Could not delete {kind.kind} {name}: {error}")
