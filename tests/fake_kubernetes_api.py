"""A fake Kubernetes API server on 127.0.0.1 for the distributed-training launcher's tests.

It serves only what the launcher calls: create/get/delete of PyTorchJobs (kubeflow.org/v1) and
TrainJobs (trainer.kubeflow.org/v1alpha1), listing pods by label selector, and reading a pod's
log. It checks each request's shape — JSON content type, apiVersion/kind matching the URL, the
namespace matching, and the body against the same schema the launcher validates with — answers
a bad one with the status a real API server would use, and records it in `problems`, which a
well-behaved test expects to stay empty. Every request is recorded in `calls`.

A job's life is scripted as a list of `Phase`s; each GET of the job moves it one phase on (the
last one sticks), writing status the way the operators do and appending log lines to its pods.
Pods carry the operators' labels (master/worker replicas for a PyTorchJob, JobSet completion
indexes for a TrainJob), so reading the wrong pod shows up as the wrong log lines. Written by
hand: no kept package ships a Kubernetes API fake that serves these custom resources.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from trainflow.kubeflow.job_schema import custom_resource_problems

KINDS = {"pytorchjobs": ("kubeflow.org", "v1", "PyTorchJob"),
         "trainjobs": ("trainer.kubeflow.org", "v1alpha1", "TrainJob")}
CONTAINERS = {"pytorchjobs": "pytorch", "trainjobs": "node"}
_CUSTOM = re.compile(r"/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
                     r"(?:/(?P<name>[^/]+))?")
_PODS = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+)/log)?")


@dataclass
class Phase:
    """One step of a scripted job: the phase, the operator's reason/message, log lines it adds."""

    name: str
    reason: str = ""
    message: str = ""
    rank0_log: tuple[str, ...] = ()
    other_log: tuple[str, ...] = ()
    on_enter: Callable[[], None] | None = None


def success_script(plural: str, rank0_log=("epoch 1 loss 0.50",), on_success=None) -> list[Phase]:
    done = "Succeeded" if plural == "pytorchjobs" else "Complete"
    return [Phase("Created"), Phase("Running", rank0_log=rank0_log, other_log=("rank 4 says hello",)),
            Phase(done, reason="JobSucceeded", message="all replicas succeeded", on_enter=on_success)]


def failure_script(reason: str, message: str, rank0_log=()) -> list[Phase]:
    return [Phase("Created"), Phase("Running", rank0_log=rank0_log, other_log=("rank 4 says hello",)),
            Phase("Failed", reason=reason, message=message)]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": _now(), "lastUpdateTime": _now()}


def pytorchjob_status(phase: Phase) -> dict[str, Any]:
    """Conditions as the Training Operator keeps them: Created stays true, Running turns false at the end."""
    conditions = [_condition("Created", "True", "PyTorchJobCreated", "")]
    if phase.name != "Created":
        conditions.append(_condition("Running", "True" if phase.name == "Running" else "False", "PyTorchJobRunning", ""))
    if phase.name not in ("Created", "Running"):
        conditions.append(_condition(phase.name, "True", phase.reason, phase.message))
    return {"conditions": conditions}


def trainjob_status(phase: Phase, nodes: int) -> dict[str, Any]:
    """Status as Trainer v2 writes it: child-job counts, plus Complete/Failed copied from the JobSet."""
    active = nodes if phase.name == "Running" else 0
    status: dict[str, Any] = {"jobsStatus": [{"name": "node", "active": active, "ready": active,
                                              "succeeded": 0, "failed": 0, "suspended": 0}]}
    if phase.name in ("Complete", "Failed"):
        status["conditions"] = [_condition(phase.name, "True", phase.reason, phase.message)]
    return status


class Answer(Exception):
    """An HTTP answer other than 200; `problem` marks a request a correct client never sends."""

    def __init__(self, code: int, reason: str, message: str, problem: bool = False):
        super().__init__(message)
        self.code, self.problem = code, problem
        self.payload = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                        "reason": reason, "code": code}


@dataclass
class FakeJob:
    plural: str
    body: dict[str, Any]
    script: list[Phase]
    step: int = -1
    gets_until_gone: int | None = None  # counts down after a DELETE when deletion is slow
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)


class FakeKubernetesApi:
    """The fake server; use it as a context manager and give the client `url`."""

    def __init__(self, installed_groups=("kubeflow.org", "trainer.kubeflow.org"), forbidden_plurals=(),
                 deletion_gets: int = 0):
        self.installed_groups, self.forbidden_plurals = set(installed_groups), set(forbidden_plurals)
        self.deletion_gets = deletion_gets  # a deleted job stays, terminating, for this many GETs
        self.lose_create_race = False  # POST finds the job just made by "another launcher": 409
        self.unavailable_gets = 0  # the next N GETs of a job answer 503, as a restarting API server does
        self.calls: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.jobs: dict[tuple[str, str, str], FakeJob] = {}
        self.scripts: dict[str, list[Phase]] = {}  # job name -> script used when that job is created
        self.logs: dict[str, list[tuple[str, str, float]]] = {}  # pod -> (kubelet stamp, text, epoch)
        self._ticks = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeKubernetesApi":
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def calls_to(self, method: str, plural: str | None = None) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["method"] == method and (plural is None or f"/{plural}" in c["path"])]

    def add_job(self, plural: str, body: dict[str, Any], script: list[Phase], step: int = 0) -> FakeJob:
        """Put a job on the 'cluster' directly, at `step` of its script (made before a launcher restart)."""
        job = FakeJob(plural, json.loads(json.dumps(body)), script)
        self.jobs[(plural, body["metadata"]["namespace"], body["metadata"]["name"])] = job
        for _ in range(step + 1):
            self._advance(job)
        return job

    # -- the job's life -----------------------------------------------------------------------
    def _advance(self, job: FakeJob) -> None:
        if job.step + 1 >= len(job.script):
            return
        job.step += 1
        phase = job.script[job.step]
        if phase.name != "Created" and not job.pods:
            self._make_pods(job)
        for pod_name, pod in job.pods.items():
            rank0 = pod["metadata"]["labels"].get("training.kubeflow.org/replica-type") == "master" or \
                pod["metadata"]["labels"].get("batch.kubernetes.io/job-completion-index") == "0"
            for line in phase.rank0_log if rank0 else phase.other_log:
                now = datetime.now(timezone.utc)
                stamp = f"{now.strftime('%Y-%m-%dT%H:%M:%S')}.{next(self._ticks):09d}Z"
                self.logs[pod_name].append((stamp, line, now.timestamp()))
        if phase.on_enter:
            phase.on_enter()
        if job.plural == "pytorchjobs":
            job.body["status"] = pytorchjob_status(phase)
        else:
            job.body["status"] = trainjob_status(phase, job.body["spec"]["trainer"].get("numNodes", 1))

    def _make_pods(self, job: FakeJob) -> None:
        name, ns = job.body["metadata"]["name"], job.body["metadata"]["namespace"]
        if job.plural == "pytorchjobs":
            workers = job.body["spec"]["pytorchReplicaSpecs"].get("Worker", {}).get("replicas", 0)
            for role, index in [("master", 0)] + [("worker", i) for i in range(workers)]:
                labels = {"training.kubeflow.org/job-name": name, "training.kubeflow.org/replica-type": role,
                          "training.kubeflow.org/replica-index": str(index),
                          "training.kubeflow.org/operator-name": "pytorchjob-controller"}
                job.pods[f"{name}-{role}-{index}"] = labels
        else:
            for index in range(job.body["spec"]["trainer"].get("numNodes", 1)):
                labels = {"jobset.sigs.k8s.io/jobset-name": name, "jobset.sigs.k8s.io/replicatedjob-name": "node",
                          "jobset.sigs.k8s.io/job-index": "0", "batch.kubernetes.io/job-completion-index": str(index)}
                job.pods[f"{name}-node-0-{index}-{uuid.uuid4().hex[:5]}"] = labels
        for pod_name, labels in job.pods.items():
            job.pods[pod_name] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": ns, "labels": labels, "creationTimestamp": _now()},
                "spec": {"containers": [{"name": CONTAINERS[job.plural], "image": "trainflow:test"}]},
                "status": {"phase": "Running"}}
            self.logs.setdefault(pod_name, [])

    # -- routes -------------------------------------------------------------------------------
    def route(self, call: dict[str, Any]) -> tuple[int, Any]:
        if match := _CUSTOM.fullmatch(call["path"]):
            return self._custom(call, **match.groupdict())
        if match := _PODS.fullmatch(call["path"]):
            if call["method"] != "GET":
                raise Answer(405, "MethodNotAllowed", "only GET is served for pods", problem=True)
            if match["name"]:
                return 200, self._log(call, match["ns"], match["name"])
            return 200, self._pods(call, match["ns"])
        raise Answer(404, "NotFound", f"the fake does not serve {call['path']}", problem=True)

    def _custom(self, call, group, version, ns, plural, name) -> tuple[int, Any]:
        if plural not in KINDS or KINDS[plural][:2] != (group, version) or group not in self.installed_groups:
            raise Answer(404, "NotFound", "the server could not find the requested resource")
        if plural in self.forbidden_plurals:
            raise Answer(403, "Forbidden", f'{plural}.{group} is forbidden: User "system:serviceaccount:{ns}:'
                         f'pipeline-runner" cannot {call["method"].lower()} resource "{plural}" in API group '
                         f'"{group}" in the namespace "{ns}"')
        if call["method"] == "POST" and name is None:
            return 201, self._create(call, ns, plural)
        job = self.jobs.get((plural, ns, name))
        if job is None:
            raise Answer(404, "NotFound", f'{plural}.{group} "{name}" not found')
        if call["method"] == "GET":
            if self.unavailable_gets:
                self.unavailable_gets -= 1
                raise Answer(503, "ServiceUnavailable", "the server is currently unable to handle the request")
            return 200, self._get(job, plural, ns, name)
        if call["method"] == "DELETE":
            return 200, self._delete(call, job, plural, ns, name)
        raise Answer(405, "MethodNotAllowed", f"{call['method']} is not served here", problem=True)

    def _create(self, call, ns: str, plural: str) -> dict[str, Any]:
        group, version, kind = KINDS[plural]
        body = call["body"]
        if not call["content_type"].startswith("application/json") or not isinstance(body, dict):
            raise Answer(415, "UnsupportedMediaType", "the body must be a JSON object", problem=True)
        if body.get("apiVersion") != f"{group}/{version}" or body.get("kind") != kind:
            raise Answer(400, "BadRequest", f"body is {body.get('kind')} {body.get('apiVersion')}, URL wants "
                         f"{kind} {group}/{version}", problem=True)
        metadata = body.get("metadata") or {}
        if metadata.get("namespace", ns) != ns:
            raise Answer(400, "BadRequest", "the namespace of the object does not match the URL", problem=True)
        problems = custom_resource_problems(body)
        if problems:
            raise Answer(422, "Invalid", f"{kind}.{group} \"{metadata.get('name')}\" is invalid: {problems[0]}",
                         problem=True)
        if self.lose_create_race:
            self.lose_create_race = False
            self.add_job(plural, {**body, "metadata": {**metadata, "namespace": ns}},
                         self.scripts.get(metadata["name"], success_script(plural)), step=0)
        if (plural, ns, metadata["name"]) in self.jobs:
            raise Answer(409, "AlreadyExists", f'{plural}.{group} "{metadata["name"]}" already exists')
        stored = json.loads(json.dumps(body))
        stored["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion="1")
        script = self.scripts.get(metadata["name"], success_script(plural))
        self.jobs[(plural, ns, metadata["name"])] = FakeJob(plural, stored, script)
        return stored

    def _get(self, job: FakeJob, plural: str, ns: str, name: str) -> dict[str, Any]:
        if job.gets_until_gone is not None:
            if job.gets_until_gone <= 0:
                del self.jobs[(plural, ns, name)]
                raise Answer(404, "NotFound", f'{plural} "{name}" not found')
            job.gets_until_gone -= 1
            return job.body
        self._advance(job)
        return job.body

    def _delete(self, call, job: FakeJob, plural: str, ns: str, name: str) -> dict[str, Any]:
        policy = (call["body"] or {}).get("propagationPolicy") or (call["query"].get("propagationPolicy") or [None])[0]
        if policy not in ("Background", "Foreground"):
            raise Answer(400, "BadRequest", "delete without a propagation policy that removes the pods", problem=True)
        for pod_name in job.pods:
            self.logs.pop(pod_name, None)
        job.pods.clear()
        if self.deletion_gets:
            job.gets_until_gone = self.deletion_gets
            job.body["metadata"]["deletionTimestamp"] = _now()
        else:
            del self.jobs[(plural, ns, name)]
        return {"kind": "Status", "apiVersion": "v1", "status": "Success"}

    def _pods(self, call, ns: str) -> dict[str, Any]:
        selector = (call["query"].get("labelSelector") or [""])[0]
        terms = [term.split("=", 1) for term in selector.split(",") if term]
        if not terms or any(len(term) != 2 or not re.fullmatch(r"[\w./-]+", term[0]) for term in terms):
            raise Answer(400, "BadRequest", f"unsupported label selector {selector!r}", problem=True)
        pods = [pod for job in self.jobs.values() for pod in job.pods.values()
                if pod["metadata"]["namespace"] == ns
                and all(pod["metadata"]["labels"].get(key) == value for key, value in terms)]
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods}

    def _log(self, call, ns: str, name: str) -> str:
        pod = next((p for job in self.jobs.values() for n, p in job.pods.items() if n == name), None)
        if pod is None or pod["metadata"]["namespace"] != ns:
            raise Answer(404, "NotFound", f'pods "{name}" not found')
        query = {key: values[0] for key, values in call["query"].items()}
        if query.get("container") != pod["spec"]["containers"][0]["name"]:
            raise Answer(400, "BadRequest", f"container {query.get('container')!r} is not valid for pod {name}",
                         problem=True)
        lines = self.logs[name]
        if "sinceSeconds" in query:
            oldest = datetime.now(timezone.utc).timestamp() - int(query["sinceSeconds"])
            lines = [line for line in lines if line[2] >= oldest]
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"]):] if int(query["tailLines"]) else []
        stamped = query.get("timestamps", "").lower() not in ("", "false", "0")  # as the API server parses bools
        return "".join(f"{stamp} {text}\n" if stamped else f"{text}\n" for stamp, text, _ in lines)


def _handler_for(api: FakeKubernetesApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            call = {"method": method, "path": parts.path, "query": parse_qs(parts.query),
                    "content_type": self.headers.get("Content-Type", ""), "body": None}
            try:
                call["body"] = json.loads(raw) if raw else None
            except ValueError:
                call["body"] = raw.decode("utf-8", "replace")
            with api._lock:
                api.calls.append(call)
                try:
                    code, payload = api.route(call)
                except Answer as answer:
                    code, payload = answer.code, answer.payload
                    if answer.problem:
                        api.problems.append(f"{method} {parts.path}: {payload['message']}")
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def do_DELETE(self):
            self._serve("DELETE")

    return Handler
