from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.component_defaults import trainflow_component


@trainflow_component
def evaluate(
    cache: Input[Dataset], model: Input[Model], model_config: dict, evaluate_config: dict, seed: int, task: str,
    metrics: Output[Metrics], classification_metrics: Output[ClassificationMetrics], report: Output[HTML],
    summary: Output[Markdown], predictions: Output[Artifact], pipeline_run_id: str = "",
):
    """Score the best checkpoint on the untouched test split, and the last checkpoint beside it.

    cache: the build_cache output. model: the train output (its best checkpoint; the last one is read
      from the checkpoint folder its training record names, when this pod can reach it).
    task: text_to_image (per-record test denoising loss: fine-tuned, last checkpoint and base, identical noise)
      or a supervised task (its metrics with bootstrap 95% intervals; tables also get a scikit-learn baseline).
    metrics: the numbers in metadata (best, last_*, best step, stop reason); the file holds everything as JSON.
    classification_metrics: confusion matrix and ROC curve for the UI (classification only; empty otherwise).
    report: self-contained HTML (curves, confusion matrix, per-class table, intervals, best vs last).
    summary: the same in short Markdown.
    predictions: per-record test outputs (predictions.safetensors + predictions.json) for later comparisons.
    pipeline_run_id: the KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER); with MLFLOW_TRACKING_URI the numbers also go
      to the `evaluate` child of the pipeline run's MLflow parent run.
    """
    from trainflow.stages.runner import run_stage
    from trainflow.stages.evaluate import evaluate as stage

    run_stage(stage, cache_dir=cache.path, model_dir=model.path, model_config=model_config,
              config=evaluate_config, seed=seed, metrics=metrics, task=task, report=report, summary=summary,
              predictions=predictions, classification=classification_metrics, pipeline_run_id=pipeline_run_id)
