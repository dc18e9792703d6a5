"""A fake Kubeflow Pipelines v2beta1 REST API on 127.0.0.1, for testing submit/schedule/runs.

It serves the endpoints kfp.Client 2.17 calls for those verbs (healthz; pipelines create, list,
upload and upload_version; pipeline versions list; experiments, runs and recurring runs) and keeps
objects in memory as kfp_server_api models. Every request body is parsed into its kfp_server_api
model with unknown fields rejected, and checked against the rules the real server enforces
(references exist, names unique, one trigger, concurrency 1..10, a 6-field cron). A violation is
answered with HTTP 400 and recorded in `problems`, which a test asserts stays empty. Written by
hand because no kept package ships a KFP API fake.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import kfp_server_api
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

API_PREFIX = "/apis/v2beta1"
EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)
_MODELS = kfp_server_api.ApiClient()

# (method, path under API_PREFIX, FakeKfpApi method)
ROUTES = [
    ("GET", r"/healthz", "get_healthz"),
    ("GET", r"/pipelines", "list_pipelines"),
    ("POST", r"/pipelines", "create_pipeline"),
    ("POST", r"/pipelines/upload", "upload_pipeline"),
    ("POST", r"/pipelines/upload_version", "upload_pipeline_version"),
    ("GET", r"/pipelines/(?P<pipeline_id>[^/]+)/versions", "list_pipeline_versions"),
    ("GET", r"/experiments", "list_experiments"),
    ("POST", r"/experiments", "create_experiment"),
    ("GET", r"/runs", "list_runs"),
    ("POST", r"/runs", "create_run"),
    ("GET", r"/recurringruns", "list_recurring_runs"),
    ("POST", r"/recurringruns", "create_recurring_run"),
    ("DELETE", r"/recurringruns/(?P<recurring_run_id>[^/]+)", "delete_recurring_run"),
]


class Rejected(Exception):
    """An HTTP error answer; `shape_problem` marks requests a correct client never sends."""

    def __init__(self, status: int, message: str, shape_problem: bool = False):
        super().__init__(message)
        self.status, self.message, self.shape_problem = status, message, shape_problem


def _bad(message: str) -> Rejected:
    return Rejected(400, message, shape_problem=True)


def unknown_fields(data, type_name: str, where: str) -> list[str]:
    """JSON keys in `data` that the kfp_server_api model `type_name` (recursively) does not have."""
    if type_name.startswith("list[") and isinstance(data, list):
        return [bad for i, item in enumerate(data) for bad in unknown_fields(item, type_name[5:-1], f"{where}[{i}]")]
    if type_name.startswith("dict(") and isinstance(data, dict):
        value_type = re.match(r"dict\([^,]*, (.*)\)", type_name).group(1)
        return [bad for key, item in data.items() for bad in unknown_fields(item, value_type, f"{where}.{key}")]
    model = getattr(kfp_server_api.models, type_name, None)
    if model is None or not model.openapi_types or not isinstance(data, dict):
        return []
    types_by_key = {model.attribute_map[attr]: kind for attr, kind in model.openapi_types.items()}
    problems = [f"{where}.{key}" for key in data if key not in types_by_key]
    for key, value in data.items():
        if key in types_by_key:
            problems += unknown_fields(value, types_by_key[key], f"{where}.{key}")
    return problems


def parse_model(raw: bytes | str, type_name: str):
    """Deserialize JSON into a kfp_server_api model, rejecting fields the model does not have."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise _bad(f"body is not JSON (expected {type_name})") from None
    unknown = unknown_fields(data, type_name, type_name)
    if unknown:
        raise _bad(f"fields unknown to {type_name}: {', '.join(unknown)}")
    return _MODELS.deserialize(SimpleNamespace(data=json.dumps(data)), type_name)


def parse_pipeline_package(filename: str, content: bytes) -> dict:
    """The pipeline spec of an uploaded YAML package, checked against the PipelineSpec proto."""
    if not filename.endswith((".yaml", ".yml")):
        raise _bad(f"uploaded file {filename!r} is not a .yaml/.yml package")
    documents = [doc for doc in yaml.safe_load_all(content) if doc is not None]
    try:
        json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
        if len(documents) > 1:
            json_format.ParseDict(documents[1], pipeline_spec_pb2.PlatformSpec())
    except (IndexError, json_format.ParseError) as exc:
        raise _bad(f"uploaded package is not a KFP pipeline spec: {exc}") from None
    return documents[0]


@dataclass
class RecordedRequest:
    method: str
    path: str
    authorization: str | None


class FakeKfpApi:
    """In-memory KFP API server; use as a context manager, talk to `.url`.

    token: when set, every request must carry `Authorization: Bearer <token>` or gets HTTP 401.
    multi_user: what healthz reports.
    """

    def __init__(self, token: str | None = None, multi_user: bool = False):
        self.token, self.multi_user = token, multi_user
        self.pipelines: dict[str, kfp_server_api.V2beta1Pipeline] = {}
        self.versions: dict[str, kfp_server_api.V2beta1PipelineVersion] = {}
        self.experiments: dict[str, kfp_server_api.V2beta1Experiment] = {}
        self.runs: dict[str, kfp_server_api.V2beta1Run] = {}
        self.recurring_runs: dict[str, kfp_server_api.V2beta1RecurringRun] = {}
        self.requests: list[RecordedRequest] = []
        self.problems: list[str] = []
        self._seconds = itertools.count()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        # a short poll interval makes shutdown() quick (the default waits up to 0.5 s)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeKfpApi":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _now(self) -> datetime:
        return EPOCH + timedelta(seconds=next(self._seconds))

    # -- request handling -------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, dict]:
        parts = urlsplit(raw_path)
        query = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        self.requests.append(RecordedRequest(method, parts.path, headers.get("Authorization")))
        if self.token and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"error": "Unauthenticated", "code": 16, "message": "Unauthenticated"}
        for route_method, pattern, name in ROUTES:
            match = re.fullmatch(API_PREFIX + pattern, parts.path)
            if match and route_method == method:
                try:
                    with self._lock:
                        return 200, getattr(self, name)(query=query, headers=headers, body=body, **match.groupdict())
                except Rejected as exc:
                    if exc.shape_problem:
                        self.problems.append(f"{method} {parts.path}: {exc.message}")
                    return exc.status, {"error": exc.message, "code": 3, "message": exc.message}
        return 404, {"error": "Not Found", "code": 5, "message": f"no route for {method} {parts.path}"}

    # -- listing ------------------------------------------------------------------------------
    def _listed(self, items, query, key: str, namespace_of=None) -> dict:
        items = list(items)
        if query.get("filter"):
            raw_filter = json.loads(query["filter"])
            for predicate in raw_filter.get("predicates", []):  # protojson also accepts camelCase
                if "stringValue" in predicate:
                    predicate["string_value"] = predicate.pop("stringValue")
            for predicate in parse_model(json.dumps(raw_filter), "V2beta1Filter").predicates or []:
                if predicate.operation not in ("EQUALS", 1) or predicate.key not in ("display_name", "name"):
                    raise _bad(f"the fake supports only EQUALS on display_name/name, got {predicate}")
                # the real server compares names case-insensitively
                wanted = str(predicate.string_value).casefold()
                items = [item for item in items if str(getattr(item, predicate.key, "")).casefold() == wanted]
        if query.get("namespace") and namespace_of:
            items = [item for item in items if namespace_of(item) == query["namespace"]]
        sort_by = query.get("sort_by", "")
        if sort_by not in ("", "created_at", "created_at desc"):
            raise _bad(f"the fake sorts only by created_at, got sort_by={sort_by!r}")
        items.sort(key=lambda item: item.created_at, reverse=sort_by.endswith("desc"))
        start, size = int(query.get("page_token") or 0), int(query.get("page_size") or 10)
        page = items[start:start + size]
        more = str(start + size) if start + size < len(items) else ""
        return {key: [_MODELS.sanitize_for_serialization(item) for item in page], "total_size": len(items),
                "next_page_token": more}

    def get_healthz(self, **_) -> dict:
        return {"multi_user": self.multi_user, "pipeline_store": "database"}

    def list_pipelines(self, query, **_) -> dict:
        return self._listed(self.pipelines.values(), query, "pipelines", namespace_of=lambda p: p.namespace)

    def list_pipeline_versions(self, query, pipeline_id, **_) -> dict:
        if pipeline_id not in self.pipelines:
            raise Rejected(404, f"pipeline {pipeline_id} not found")
        versions = [v for v in self.versions.values() if v.pipeline_id == pipeline_id]
        return self._listed(versions, query, "pipeline_versions")

    def list_experiments(self, query, **_) -> dict:
        return self._listed(self.experiments.values(), query, "experiments", namespace_of=lambda e: e.namespace)

    def list_runs(self, query, **_) -> dict:
        runs = [r for r in self.runs.values() if not query.get("experiment_id") or r.experiment_id == query["experiment_id"]]
        return self._listed(runs, query, "runs", namespace_of=lambda r: self.experiments[r.experiment_id].namespace)

    def list_recurring_runs(self, query, **_) -> dict:
        runs = [r for r in self.recurring_runs.values()
                if not query.get("experiment_id") or r.experiment_id == query["experiment_id"]]
        # the proto field really is camelCase: ListRecurringRunsResponse.recurringRuns
        return self._listed(runs, query, "recurringRuns", namespace_of=lambda r: r.namespace)

    # -- pipelines ------------------------------------------------------------------------------
    def _add_pipeline(self, name: str, display_name: str, description, namespace) -> kfp_server_api.V2beta1Pipeline:
        if not name:
            raise _bad("a pipeline needs a name or display_name")
        if any(p.name == name and (p.namespace or "") == (namespace or "") for p in self.pipelines.values()):
            raise Rejected(409, f"pipeline {name!r} already exists")
        pipeline = kfp_server_api.V2beta1Pipeline(
            pipeline_id=str(uuid.uuid4()), name=name, display_name=display_name or name, description=description,
            namespace=namespace or None, created_at=self._now(),
        )
        self.pipelines[pipeline.pipeline_id] = pipeline
        return pipeline

    def _add_version(self, pipeline_id: str, name: str, display_name, description, spec: dict):
        if pipeline_id not in self.pipelines:
            raise _bad(f"pipelineid {pipeline_id!r} names no pipeline")
        if any(v.pipeline_id == pipeline_id and v.name == name for v in self.versions.values()):
            raise Rejected(409, f"pipeline version {name!r} already exists")
        version = kfp_server_api.V2beta1PipelineVersion(
            pipeline_id=pipeline_id, pipeline_version_id=str(uuid.uuid4()), name=name,
            display_name=display_name or name, description=description, pipeline_spec=spec, created_at=self._now(),
        )
        self.versions[version.pipeline_version_id] = version
        return version

    def create_pipeline(self, body, **_) -> dict:
        pipeline = parse_model(body, "V2beta1Pipeline")
        if pipeline.pipeline_id:
            raise _bad("pipeline_id is assigned by the server, not sent")
        created = self._add_pipeline(pipeline.name or pipeline.display_name, pipeline.display_name,
                                     pipeline.description, pipeline.namespace)
        return _MODELS.sanitize_for_serialization(created)

    def upload_pipeline(self, query, headers, body, **_) -> dict:
        filename, content = _uploaded_file(headers, body)
        spec = parse_pipeline_package(filename, content)
        name = query.get("name") or query.get("display_name") or filename
        pipeline = self._add_pipeline(name, query.get("display_name"), query.get("description"), query.get("namespace"))
        self._add_version(pipeline.pipeline_id, pipeline.name, pipeline.display_name, pipeline.description, spec)
        return _MODELS.sanitize_for_serialization(pipeline)

    def upload_pipeline_version(self, query, headers, body, **_) -> dict:
        filename, content = _uploaded_file(headers, body)
        spec = parse_pipeline_package(filename, content)
        if not query.get("pipelineid"):
            raise _bad("upload_version needs the pipelineid query parameter")
        name = query.get("name") or query.get("display_name") or filename
        version = self._add_version(query["pipelineid"], name, query.get("display_name"), query.get("description"), spec)
        return _MODELS.sanitize_for_serialization(version)

    # -- experiments, runs, recurring runs --------------------------------------------------------
    def create_experiment(self, body, **_) -> dict:
        experiment = parse_model(body, "V2beta1Experiment")
        if not experiment.display_name or experiment.experiment_id:
            raise _bad("an experiment needs a display_name and no experiment_id")
        experiment.experiment_id, experiment.created_at = str(uuid.uuid4()), self._now()
        experiment.storage_state = "AVAILABLE"
        self.experiments[experiment.experiment_id] = experiment
        return _MODELS.sanitize_for_serialization(experiment)

    def _check_job(self, job, kind: str) -> None:
        if not job.display_name:
            raise _bad(f"a {kind} needs a display_name")
        if job.experiment_id not in self.experiments:
            raise _bad(f"{kind} experiment_id {job.experiment_id!r} names no experiment")
        if (job.pipeline_spec is None) == (job.pipeline_version_reference is None):
            raise _bad(f"a {kind} needs exactly one of pipeline_spec and pipeline_version_reference")
        reference = job.pipeline_version_reference
        if reference is not None:
            version = self.versions.get(reference.pipeline_version_id or "")
            if version is None or version.pipeline_id != reference.pipeline_id:
                raise _bad(f"{kind} pipeline_version_reference {reference.to_dict()} names no pipeline version")
        if job.runtime_config is None:
            raise _bad(f"a {kind} needs a runtime_config (kfp.Client always sends one)")

    def create_run(self, body, **_) -> dict:
        run = parse_model(body, "V2beta1Run")
        self._check_job(run, "run")
        run.run_id, run.created_at, run.state, run.storage_state = str(uuid.uuid4()), self._now(), "PENDING", "AVAILABLE"
        self.runs[run.run_id] = run
        return _MODELS.sanitize_for_serialization(run)

    def create_recurring_run(self, body, **_) -> dict:
        job = parse_model(body, "V2beta1RecurringRun")
        self._check_job(job, "recurring run")
        if job.mode not in ("ENABLE", "DISABLE"):
            raise _bad(f"recurring run mode must be ENABLE or DISABLE, got {job.mode!r}")
        if not str(job.max_concurrency or "").isdigit() or not 1 <= int(job.max_concurrency) <= 10:
            raise _bad(f"max_concurrency must be 1..10, got {job.max_concurrency!r}")
        trigger = job.trigger
        if trigger is None or (trigger.cron_schedule is None) == (trigger.periodic_schedule is None):
            raise _bad("a recurring run needs a trigger with exactly one of cron_schedule and periodic_schedule")
        if trigger.cron_schedule is not None and len(str(trigger.cron_schedule.cron or "").split()) != 6:
            raise _bad(f"cron {trigger.cron_schedule.cron!r} does not have 6 fields (seconds first)")
        job.recurring_run_id, job.created_at = str(uuid.uuid4()), self._now()
        job.status = "ENABLED" if job.mode == "ENABLE" else "DISABLED"
        self.recurring_runs[job.recurring_run_id] = job
        return _MODELS.sanitize_for_serialization(job)

    def delete_recurring_run(self, recurring_run_id, **_) -> dict:
        if self.recurring_runs.pop(recurring_run_id, None) is None:
            raise Rejected(404, f"recurring run {recurring_run_id} not found")
        return {}


def _uploaded_file(headers, body: bytes) -> tuple[str, bytes]:
    content_type = headers.get("Content-Type", "")
    if not content_type.startswith("multipart/form-data"):
        raise _bad(f"an upload must be multipart/form-data, got {content_type!r}")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "uploadfile":
            return part.get_filename() or "", part.get_payload(decode=True)
    raise _bad("multipart body has no 'uploadfile' part")


def _handler_for(api: FakeKfpApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, payload = api.handle(self.command, self.path, self.headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    return Handler
