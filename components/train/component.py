from typing import Optional

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.component_defaults import trainflow_component


@trainflow_component
def train(
    cache: Input[Dataset], model_config: dict, train_config: dict, seed: int, task: str, checkpoint_dir: str,
    model: Output[Model], metrics: Output[Metrics], tensorboard: Output[Artifact],
    platform: Optional[dict] = None, run_id: str = "", task_name: str = "",
):
    """Train the task on the cache with validation, early stopping and checkpoints; resume if checkpoints exist.

    cache: the build_cache output.
    model_config / train_config: the `model` and `train` config sections; with train.distributed set this
      step launches a PyTorchJob/TrainJob (torchrun on every node) and waits for it instead of training here.
    task: text_to_image | classification | regression | segmentation.
    checkpoint_dir: where checkpoints go; '' = <workspace>/runs/<run id>/<task>/checkpoints on a cluster
      (beside the model artifact locally), so a retried task resumes and a new run starts fresh.
    platform: the compiled `platform` section plus `image` (None on a local run).
    run_id / task_name: the KFP run id and task name (placeholders); they name the workspace folder and the job.
    model: the best checkpoint, exported by the task (a diffusers folder, or config.json + model.safetensors);
      trainflow_training.json in it records the history and why training stopped.
    metrics: best monitored value, best step/epoch, steps run, stop reason.
    tensorboard: TensorBoard event files (loss, learning rate, gradient norm, throughput, memory).
    """
    from trainflow.stages.train import train as stage
    from trainflow.stages.runner import run_stage

    run_stage(stage, task=task, cache_dir=cache.path, model_config=model_config, config=train_config, seed=seed,
              model=model, metrics=metrics, checkpoint_dir=checkpoint_dir, logs=tensorboard, platform=platform,
              run_id=run_id, task_name=task_name)
