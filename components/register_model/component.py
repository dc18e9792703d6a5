from typing import Optional

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.component_defaults import trainflow_component


@trainflow_component
def register_model(
    dataset: Input[Dataset], model: Input[Model], eval_metrics: Input[Metrics],
    register_config: dict, run_name: str, params: dict, report: Output[Markdown], task: str,
    score_metrics: Optional[Input[Metrics]] = None, predictions: Optional[Input[Artifact]] = None,
    cache: Optional[Input[Dataset]] = None, seed: int = 0, pipeline_run_id: str = "",
    pipeline_name: str = "",
):
    """Log the run to MLflow and register a model version only if the configured gates pass.

    dataset / model / eval_metrics / score_metrics: outputs of the earlier stages
      (score_metrics only in the text-to-image pipeline).
    predictions / cache: the evaluate stage's per-record outputs and the build_cache output; beat_champion
      gates run the champion (the registered model's champion alias) on that cache's test split and compare.
    register_config: the `register` section (model name, experiment, tracking URI, gates, champion alias).
    params: the whole run config, logged as MLflow params (URI credentials redacted). task, seed: the run's.
    pipeline_run_id: the KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER); keys the work, so a retried step finishes
      what a crashed attempt started instead of registering a second version.
    pipeline_name: the compiled pipeline's name, kept in the version's lineage (trainflow.lineage.* tags, with the
      dataset's and its split manifest's hashes; the dataset is also the MLflow run's dataset input).
    report: Markdown saying the registered version (challenger, or champion when it beat the champion), or why it
      was not registered.
    """
    from trainflow.stages.runner import run_stage
    from trainflow.stages.register_model import register_model as stage

    run_stage(stage, model_dir=model.path, dataset_metadata=dataset.metadata,
              eval_metrics=eval_metrics.metadata, score_metrics=score_metrics.metadata if score_metrics else {},
              config=register_config, run_name=run_name, params=params, report=report, task=task,
              predictions_dir=predictions.path if predictions else None, cache_dir=cache.path if cache else None,
              seed=seed, pipeline_run_id=pipeline_run_id, dataset_dir=dataset.path, dataset_uri=dataset.uri,
              pipeline_name=pipeline_name)
