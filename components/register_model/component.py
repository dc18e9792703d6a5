from typing import Optional

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.component_defaults import trainflow_component


@trainflow_component
def register_model(
    dataset: Input[Dataset], model: Input[Model], eval_metrics: Input[Metrics],
    register_config: dict, run_name: str, params: dict, report: Output[Markdown],
    score_metrics: Optional[Input[Metrics]] = None,
):
    """Log the run to MLflow and register a model version only if the configured gates pass.

    dataset / model / eval_metrics / score_metrics: outputs of the earlier stages
      (score_metrics only in the text-to-image pipeline).
    register_config: the `register` section (model name, experiment, tracking URI, gates).
    params: the whole run config, logged as MLflow params.
    report: Markdown saying the registered version, or why it was not registered.
    """
    from trainflow.stage_runner import run_stage
    from trainflow.stages.register_model import register_model as stage

    run_stage(stage, model_dir=model.path, dataset_metadata=dataset.metadata,
              eval_metrics=eval_metrics.metadata, score_metrics=score_metrics.metadata if score_metrics else {},
              config=register_config, run_name=run_name, params=params, report=report)
