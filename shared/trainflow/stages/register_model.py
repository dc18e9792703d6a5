"""Stage 6: record the run in MLflow and register a model version if the gates pass; challenger or champion."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_write_text
from trainflow.config import RegisterConfig, parse_section
from trainflow.registry.gates import ChampionEvidence, failed_gates
from trainflow.redaction import redact, redact_text, uri_with_environment_credentials
from trainflow.registry.pipeline_run import child_tags, finish_parent, pipeline_parent_run
from trainflow.registry.tracking import connect, default_tracking_uri, ensure_experiment, flatten_params


def register_model(
    model_dir: str, dataset_metadata: dict[str, Any], eval_metrics: dict[str, Any], score_metrics: dict[str, Any],
    config: dict[str, Any], run_name: str, params: dict[str, Any], report: ArtifactLike,
    task: str, predictions_dir: str | None = None, cache_dir: str | None = None, seed: int = 0,
    pipeline_run_id: str = "", dataset_dir: str | None = None, dataset_uri: str | None = None, pipeline_name: str = "",
) -> dict[str, Any]:
    """Log params, metrics and the model (an MLflow Model) to MLflow; register a version only past the gates.

    The MLflow run is recorded either way, so rejected candidates stay comparable. A registered
    version takes the challenger alias, and the champion alias when it beats the champion by
    register.promotion_margin (trainflow.registry.promotion): per test record against the champion
    run on the same split (`predictions_dir`, `cache_dir`) for tasks that keep per-record outputs,
    by the recorded numbers otherwise. `pipeline_run_id` (the KFP run id) keys the work, so a retry
    finishes what a crashed attempt started (trainflow.registry.registration); the run is a child of the
    pipeline run's MLflow parent run, which this last stage marks FINISHED (trainflow.registry.pipeline_run).
    Outputs: `report` (Markdown) and its metadata: registered, model_name, model_version, reasons (why not), promoted,
    promotion_reason, champion_version, mlflow_run_id, tracking_uri (credentials redacted).
    Lineage (trainflow.registry.lineage) goes on the run and the version as trainflow.lineage.* tags: hashes
    of the dataset, of its split manifest (`dataset_dir`/manifest.jsonl) and of `params`, the trainflow
    version, git commit, image, KFP run id and `pipeline_name`; the Dataset (`dataset_uri`) is the run's input.
    UserFacingError when the tracking store does not answer (nothing is registered then).
    """
    from trainflow.registry import lineage as origin
    from trainflow.registry import registration as steps
    from trainflow.report.registration_report import registration_markdown

    cfg: RegisterConfig = parse_section(RegisterConfig, config, "the register section")
    with timed_stage("register_model", report):
        numbers = {k: float(v) for k, v in {**eval_metrics, **score_metrics}.items() if not k.startswith("stage")
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        # The client may need the credentials (a database URI); everything recorded gets the redacted URI.
        tracking_uri = uri_with_environment_credentials(cfg.tracking_uri or default_tracking_uri())
        client = connect(tracking_uri)
        experiment_id = ensure_experiment(client, cfg.experiment, tracking_uri)
        parent = pipeline_parent_run(client, experiment_id, pipeline_run_id) if pipeline_run_id else None
        run = steps.open_run(client, experiment_id, steps.registration_key(pipeline_run_id, task), run_name,
                             child_tags(parent, "register_model", pipeline_run_id) if parent else None)
        run_id = run.info.run_id
        dataset_hash = str(dataset_metadata.get("content_sha256", "unknown"))
        lineage = origin.compute_lineage(dataset_metadata, dataset_dir, params, pipeline_run_id, pipeline_name)
        origin.set_run_lineage(client, run_id, lineage)
        origin.log_dataset_input(client, run_id, dataset_metadata, dataset_uri or dataset_dir)
        with tempfile.TemporaryDirectory(prefix="trainflow-register-") as scratch:
            decision = steps.saved_decision(client, run_id, Path(scratch))
        if decision is None:
            decision = _decide(cfg, client, tracking_uri, task, numbers, predictions_dir, cache_dir, seed)
            tags = {"trainflow.dataset_sha256": dataset_hash, "trainflow.stop_reason": str(eval_metrics.get("stop_reason", "")),
                    "trainflow.gates": "passed" if not decision["reasons"] else "failed: " + "; ".join(decision["reasons"]),
                    "trainflow.champion_version": str(decision["champion_version"] or "none yet"),
                    "trainflow.promotion": decision["promotion"]["reason"] if not decision["reasons"] else "not registered"}
            evidence = steps.evidence_from(decision["evidence"])
            steps.record_decision(client, run_id, decision, flatten_params(params),
                                  {**numbers, **_champion_numbers(evidence)}, {k: redact_text(v)[:5000] for k, v in tags.items()})
        evidence = steps.evidence_from(decision["evidence"])
        model = steps.logged_model(client, run, task, model_dir)
        version = None
        if not decision["reasons"]:
            from trainflow.registry.promotion import PromotionDecision, apply_decision

            version = steps.version_of_run(client, cfg.model_name, run_id, model, {"dataset_sha256": dataset_hash},
                                           f"trainflow run {run_name}")
            origin.set_version_lineage(client, cfg.model_name, version, lineage)
            apply_decision(client, cfg, version, PromotionDecision(**decision["promotion"]))
        steps.finish(client, run_id)
        if parent:
            finish_parent(client, parent)  # the last stage: the pipeline run's record is complete
        promoted = version is not None and decision["promotion"]["promote"]
        outcome = {
            "registered": version is not None, "model_name": cfg.model_name, "model_version": version,
            "reasons": redact(decision["reasons"]), "mlflow_run_id": run_id, "tracking_uri": redact_text(tracking_uri),
            "dataset_sha256": dataset_hash, "champion_alias": cfg.champion_alias, "challenger_alias": cfg.challenger_alias,
            "promoted": promoted, "promotion_reason": decision["promotion"]["reason"] if version is not None else "",
            "champion_version": decision["champion_version"],
        }
        report.metadata.update(outcome)
        atomic_write_text(report.path, registration_markdown(outcome, decision["numbers"], evidence))
        if version is None:
            print(f"register: not registered: {'; '.join(decision['reasons'])} (MLflow run {run_id} recorded)")
        else:
            alias = cfg.champion_alias if promoted else cfg.challenger_alias
            print(f"register: registered {cfg.model_name} version {version} as '{alias}': {outcome['promotion_reason']} "
                  f"(MLflow run {run_id})")
    return {**outcome, "champion": _champion_summary(evidence)}


def _decide(cfg: RegisterConfig, client, tracking_uri: str, task: str, numbers: dict[str, float],
            predictions_dir: str | None, cache_dir: str | None, seed: int) -> dict[str, Any]:
    """The gates' verdict and, for a candidate that passes, whether it takes the champion alias (JSON-ready)."""
    from trainflow.registry import promotion
    from trainflow.registry.champion import champion_evidence
    from trainflow.registry.registration import champion_numbers, evidence_summary
    from trainflow.tasks import get_task

    definition = get_task(task)
    reasons = failed_gates(cfg.gates, numbers)
    gates = promotion.comparison_gates(cfg, definition.compares_per_record, definition.headline_keys()[0])
    evidence, decision = None, promotion.PromotionDecision(False, "not registered")
    if definition.compares_per_record:
        evidence = champion_evidence(cfg, gates, client, tracking_uri, task, predictions_dir, cache_dir, seed)
        champion_version = evidence.version if evidence else None
        if not reasons:
            decision = promotion.decide_by_bootstrap(gates, evidence, cfg.promotion_margin)
    else:
        champion_version, recorded = champion_numbers(client, cfg)
        if not reasons:
            decision = promotion.decide_by_numbers(gates, numbers, champion_version, recorded, cfg.promotion_margin)
    return {"reasons": reasons, "numbers": numbers, "evidence": evidence_summary(evidence),
            "champion_version": champion_version, "promotion": {"promote": decision.promote, "reason": decision.reason}}


def _champion_numbers(evidence: ChampionEvidence | None) -> dict[str, float]:
    """champion_<metric> and the improvement's interval, logged beside the candidate's own numbers."""
    numbers: dict[str, float] = {}
    for key, result in (evidence.comparisons if evidence else {}).items():
        numbers[f"champion_{key}"] = result["b"]
        numbers[f"vs_champion_{key}_improvement"] = result["improvement"]
        numbers[f"vs_champion_{key}_improvement_low"] = result["improvement_low"]
        numbers[f"vs_champion_{key}_improvement_high"] = result["improvement_high"]
    return numbers


def _champion_summary(evidence: ChampionEvidence | None) -> dict[str, Any] | None:
    if evidence is None:
        return None
    return {"version": evidence.version, "comparisons": evidence.comparisons, "unavailable": evidence.unavailable}
