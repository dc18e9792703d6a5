from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.component_defaults import trainflow_component


@trainflow_component
def evaluate(
    cache: Input[Dataset], model: Input[Model], model_config: dict, evaluate_config: dict, seed: int, task: str,
    metrics: Output[Metrics],
):
    """Score the best checkpoint on the untouched test split.

    cache: the build_cache output. model: the train output (its best checkpoint).
    task: text_to_image (test denoising loss, fine-tuned and base, identical noise) or a supervised task
      (its metrics with bootstrap 95% intervals; tables also get a scikit-learn baseline).
    metrics: the numbers in metadata (plus best step, stop reason); the file holds everything as JSON.
    """
    from trainflow.stage_runner import run_stage
    from trainflow.stages.evaluate import evaluate as stage

    run_stage(stage, cache_dir=cache.path, model_dir=model.path, model_config=model_config,
              config=evaluate_config, seed=seed, metrics=metrics, task=task)
