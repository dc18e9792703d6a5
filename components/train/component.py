from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.component_defaults import trainflow_component


@trainflow_component
def train(
    cache: Input[Dataset], model_config: dict, train_config: dict, seed: int, checkpoint_dir: str,
    model: Output[Model], metrics: Output[Metrics],
):
    """Fine-tune the UNet on cached latents with validation, early stopping and checkpoints.

    cache: the build_cache output.
    model_config / train_config: the `model` and `train` config sections.
    checkpoint_dir: where best/ and last/ checkpoints go ('' = beside the model artifact).
    model: the best epoch as a complete diffusers pipeline folder; metadata has best_epoch, stop_reason.
    metrics: best_val_loss, best_epoch, epochs_run, final_train_loss.
    """
    from trainflow.stage_runner import run_stage
    from trainflow.stages.train import train as stage

    run_stage(stage, cache_dir=cache.path, model_config=model_config, config=train_config, seed=seed,
              model=model, metrics=metrics, checkpoint_dir=checkpoint_dir)
