from typing import Optional

from kfp.dsl import Markdown, Output

from components.component_defaults import trainflow_component


@trainflow_component
def preflight(
    task: str, ingest_config: dict, model_config: dict, cache_config: dict, train_config: dict,
    evaluate_config: dict, register_config: dict, report: Output[Markdown],
    score_config: Optional[dict] = None, platform: Optional[dict] = None, run_id: str = "",
):
    """Check the run before any task that retries: config sections, data path, weights, workspace.

    task: text_to_image | classification | regression | segmentation.
    *_config: the run config's sections as the later stages receive them (score_config: text-to-image only).
    platform: the compiled `platform` section plus `image` (None on a local run): volumes and training pods.
    run_id: the KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER); keys the run's folder on the workspace.
    report: Markdown list of what was checked and found.
    Runs without retries: a user error exits with code 2 here, once, instead of in a retried GPU task.
    """
    from trainflow.stages.preflight import preflight as stage
    from trainflow.stages.runner import run_stage

    sections = {"ingest": ingest_config, "model": model_config, "cache": cache_config, "train": train_config,
                "evaluate": evaluate_config, "score": score_config, "register": register_config}
    run_stage(stage, task=task, sections=sections, report=report, platform=platform, run_id=run_id)
