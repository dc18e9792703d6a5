from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.component_defaults import trainflow_component


@trainflow_component
def score_generation(
    dataset: Input[Dataset], model: Input[Model], model_config: dict, score_config: dict, seed: int,
    metrics: Output[Metrics], report: Output[HTML], pipeline_run_id: str = "",
):
    """Generate for the test captions; FID, prompt accuracy, CLIP score, LPIPS diversity vs. the base model.

    dataset: the ingest_split output (test images and captions). model: the train output.
    metrics: computed metrics (base model values prefixed base_); skipped ones are listed in report metadata.
    report: HTML sample grid with the metrics table.
    pipeline_run_id: the KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER); with MLFLOW_TRACKING_URI the numbers also go
      to the `score_generation` child of the pipeline run's MLflow parent run.
    """
    from trainflow.stages.runner import run_stage
    from trainflow.stages.score_generation import score_generation as stage

    run_stage(stage, dataset_dir=dataset.path, model_dir=model.path, model_config=model_config,
              config=score_config, seed=seed, metrics=metrics, report=report, pipeline_run_id=pipeline_run_id)
