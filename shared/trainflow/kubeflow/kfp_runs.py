"""Start a run, create a recurring run, and list recent runs on a Kubeflow Pipelines server.

Runs start from an uploaded pipeline version whose parameter defaults are the run config, so no
parameter is passed: what the version shows in the UI is exactly what runs.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from trainflow.errors import UserFacingError
from trainflow.kubeflow.kfp_connection import KfpTarget, connected_client
from trainflow.kubeflow.pipeline_package import compile_pipeline_package, default_pipeline
from trainflow.kubeflow.pipeline_upload import PipelineVersionRef, ensure_pipeline_version, equals_filter

CRON_FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
MAX_LIST_SIZE = 200  # the KFP API server caps a page at 200 items


@dataclass(frozen=True)
class StartedRun:
    run_id: str
    run_name: str
    url: str
    version: PipelineVersionRef


@dataclass(frozen=True)
class ScheduleOutcome:
    recurring_run_id: str
    name: str
    created: bool  # False: one with this name existed and was left alone
    replaced_ids: tuple[str, ...] = ()
    version: PipelineVersionRef | None = None


@dataclass(frozen=True)
class RunRow:
    status: str
    created: datetime | None
    name: str
    run_id: str


def validate_cron(expression: str) -> str:
    """Check a KFP cron expression has 6 fields (seconds first); return it with single spaces.

    Raises UserFacingError naming the expected fields; the server checks the values themselves.
    """
    fields = expression.split()
    if len(fields) != len(CRON_FIELDS):
        raise UserFacingError(
            f"--cron {expression!r} has {len(fields)} field(s), but KFP cron expressions have 6 "
            f"({' '.join(CRON_FIELDS)}), e.g. '0 0 3 * * *' for 03:00 every day"
        )
    for name, value in zip(CRON_FIELDS, fields):
        if not re.fullmatch(r"[0-9A-Za-z*?/,\-]+", value):
            raise UserFacingError(f"--cron {expression!r}: the {name} field {value!r} is not a cron field")
    return " ".join(fields)


@contextlib.contextmanager
def _compiled_package(config_path: str, pipeline: str | None) -> Iterator[tuple[object, Path]]:
    from trainflow.config import load_config

    config = load_config(config_path, check_local_paths=False)  # paths are the pods' paths
    with tempfile.TemporaryDirectory(prefix="trainflow-package-") as folder:
        package = compile_pipeline_package(config, pipeline or default_pipeline(config), Path(folder) / "pipeline.yaml")
        yield config, package


def _find_experiment_id(client, name: str, namespace: str | None) -> str | None:
    response = client.list_experiments(filter=equals_filter("display_name", name), namespace=namespace, page_size=100)
    matches = [experiment for experiment in response.experiments or [] if experiment.display_name == name]
    return matches[0].experiment_id if matches else None


def _experiment_id(client, name: str, namespace: str | None) -> str:
    existing = _find_experiment_id(client, name, namespace)
    if existing is not None:
        return existing
    import kfp_server_api

    body = kfp_server_api.V2beta1Experiment(display_name=name, namespace=namespace, description="Runs started by trainflow.")
    return client.experiments.experiment_service_create_experiment(experiment=body).experiment_id


def submit_pipeline_run(
    target: KfpTarget, config_path: str, pipeline: str | None = None, experiment: str | None = None,
    run_name: str | None = None, service_account: str | None = None,
) -> StartedRun:
    """Compile the config, upload it as a pipeline version if new, and start one run of it.

    experiment: KFP experiment (created if missing); default the config's register.experiment.
    run_name: default '<run_name>-<UTC time>'. service_account: default the KFP runner's.
    Raises UserFacingError for config errors and for connection/HTTP errors (one sentence each).
    """
    with _compiled_package(config_path, pipeline) as (config, package), connected_client(target) as client:
        version = ensure_pipeline_version(client, package, target.namespace)
        experiment_id = _experiment_id(client, experiment or config.registration.experiment, target.namespace)
        name = run_name or f"{config.run_name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        run = client.run_pipeline(
            experiment_id=experiment_id, job_name=name, pipeline_id=version.pipeline_id,
            version_id=version.version_id, params={}, service_account=service_account,
        )
    return StartedRun(run_id=run.run_id, run_name=name, url=target.run_url(run.run_id), version=version)


def schedule_pipeline(
    target: KfpTarget, config_path: str, cron: str, name: str | None = None, experiment: str | None = None,
    pipeline: str | None = None, replace: bool = False, service_account: str | None = None,
) -> ScheduleOutcome:
    """Create a recurring run (max concurrency 1, no catch-up, enabled) of the config's pipeline.

    name: default '<run_name>-schedule'. If recurring runs with this name exist in the experiment,
    nothing changes unless `replace`: then the new one is created first and the old ones deleted.
    Raises UserFacingError for a cron without 6 fields, config errors and connection/HTTP errors.
    """
    cron = validate_cron(cron)
    with _compiled_package(config_path, pipeline) as (config, package), connected_client(target) as client:
        name = name or f"{config.run_name}-schedule"
        experiment_id = _experiment_id(client, experiment or config.registration.experiment, target.namespace)
        listed = client.list_recurring_runs(
            experiment_id=experiment_id, filter=equals_filter("display_name", name), page_size=100
        ).recurring_runs
        existing = [run.recurring_run_id for run in listed or [] if run.display_name == name]
        if existing and not replace:
            return ScheduleOutcome(recurring_run_id=existing[0], name=name, created=False)
        version = ensure_pipeline_version(client, package, target.namespace)
        created = client.create_recurring_run(
            experiment_id=experiment_id, job_name=name, cron_expression=cron, max_concurrency=1, no_catchup=True,
            enabled=True, pipeline_id=version.pipeline_id, version_id=version.version_id, params={},
            service_account=service_account,
            description=f"trainflow schedule of '{config.run_name}' ({version.version_name}), cron {cron}",
        )
        for old_id in existing:
            client.delete_recurring_run(old_id)
    return ScheduleOutcome(created.recurring_run_id, name, created=True, replaced_ids=tuple(existing), version=version)


def recent_runs(target: KfpTarget, experiment: str | None = None, limit: int = 20) -> list[RunRow]:
    """The `limit` most recent runs, newest first, optionally of one experiment (by name).

    Raises UserFacingError for a limit outside 1..200, an unknown experiment, or connection/HTTP errors.
    """
    if not 1 <= limit <= MAX_LIST_SIZE:
        raise UserFacingError(f"--limit must be between 1 and {MAX_LIST_SIZE}, got {limit}")
    with connected_client(target) as client:
        experiment_id = None
        if experiment:
            experiment_id = _find_experiment_id(client, experiment, target.namespace)
            if experiment_id is None:
                raise UserFacingError(f"no experiment named '{experiment}' at {target.base_url}; check the name or leave out --experiment")
        response = client.list_runs(
            page_size=limit, sort_by="created_at desc", experiment_id=experiment_id, namespace=target.namespace
        )
    return [
        RunRow(status=str(run.state or "UNKNOWN"), created=run.created_at, name=run.display_name or "", run_id=run.run_id)
        for run in response.runs or []
    ]


def runs_table(rows: list[RunRow]):
    """A compact rich Table of runs: status, created (UTC), name, run id."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for header in ("status", "created (UTC)", "name", "run id"):
        table.add_column(header, no_wrap=header != "name", overflow="fold")
    for row in rows:
        created = row.created.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if row.created else "-"
        table.add_row(row.status, created, row.name, row.run_id)
    return table
