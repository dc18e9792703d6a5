"""Push each stage's duration and outcome to a Prometheus Pushgateway, when one is configured.

Short-lived stages (ingest, cache, evaluate, score, register) end before Prometheus could scrape
them, so `trainflow.stages.runner.run_stage` pushes one group per stage when it returns or fails:

    TRAINFLOW_PUSHGATEWAY=http://pushgateway.monitoring:9091   (an environment variable; on a cluster
                                                                set it with platform.env, which reaches
                                                                every task and training pod)

    job="trainflow_stage", stage="<stage function>"   (the grouping key: the newest run of a stage)
    trainflow_stage_duration_seconds                   wall time of the stage
    trainflow_stage_outcome{outcome}                   1 for this run's outcome, 0 for the others:
                                                       succeeded | user_error | unavailable | failed | cancelled
    trainflow_stage_last_run_timestamp_seconds
    trainflow_stage_last_success_timestamp_seconds     pushed on success only: POST (pushadd) replaces
                                                       only the names pushed, so a failure keeps it

A Pushgateway that is down or slow (5 s timeout) never fails a stage: one warning line. The URL
must carry no credentials (they would sit in the pipeline spec); one that does is not used.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.parse

PUSHGATEWAY_ENV = "TRAINFLOW_PUSHGATEWAY"
JOB = "trainflow_stage"
OUTCOMES = ("succeeded", "user_error", "unavailable", "failed", "cancelled")
TIMEOUT_SECONDS = 5.0


def _warn(text: str) -> None:
    print(f"trainflow: warning: {text}; the stage goes on", file=sys.stderr, flush=True)


def push_stage_outcome(stage: str, seconds: float, outcome: str) -> None:
    """Push `stage`'s duration and outcome (one of OUTCOMES) if TRAINFLOW_PUSHGATEWAY is set. Never raises."""
    url = os.environ.get(PUSHGATEWAY_ENV, "").strip()
    if not url:
        return
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        _warn(f"{PUSHGATEWAY_ENV} is not an http(s) URL with a host (and a numeric port), so stage metrics are not pushed")
        return
    where = f"the Pushgateway at {parts.hostname}" + (f":{port}" if port else "")
    if parts.username or parts.password:
        _warn(f"{PUSHGATEWAY_ENV} carries credentials, which trainflow never sends; stage metrics are not pushed")
        return
    try:
        from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

        registry = CollectorRegistry()
        Gauge("trainflow_stage_duration_seconds", "Wall time of the stage's last run.", registry=registry).set(seconds)
        outcomes = Gauge("trainflow_stage_outcome", "1 for the outcome of the stage's last run.", ["outcome"],
                         registry=registry)
        for name in OUTCOMES:
            outcomes.labels(name).set(1 if name == outcome else 0)
        now = time.time()
        Gauge("trainflow_stage_last_run_timestamp_seconds", "When the stage last ended.", registry=registry).set(now)
        if outcome == "succeeded":
            Gauge("trainflow_stage_last_success_timestamp_seconds", "When the stage last succeeded.",
                  registry=registry).set(now)
        gateway = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        pushadd_to_gateway(gateway, job=JOB, grouping_key={"stage": stage}, registry=registry, timeout=TIMEOUT_SECONDS)
    except Exception as exc:  # an outage, a refusal, a timeout: metrics are never worth a failed stage
        reason = " ".join(str(getattr(exc, "reason", exc)).split())[:200] or type(exc).__name__
        _warn(f"could not push stage metrics to {where} ({reason})")
