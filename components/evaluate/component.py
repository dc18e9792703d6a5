from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.component_defaults import trainflow_component


@trainflow_component
def evaluate(
    cache: Input[Dataset], model: Input[Model], model_config: dict, evaluate_config: dict, seed: int,
    metrics: Output[Metrics],
):
    """Test-split denoising loss of the best checkpoint and of the base model, with identical noise.

    cache: the build_cache output. model: the train output (its best epoch).
    metrics: test_loss, base_test_loss, best_epoch, best_val_loss, epochs_run; metadata has stop_reason.
    """
    from trainflow.stage_runner import run_stage
    from trainflow.stages.evaluate import evaluate as stage

    run_stage(stage, cache_dir=cache.path, model_dir=model.path, model_config=model_config,
              config=evaluate_config, seed=seed, metrics=metrics)
