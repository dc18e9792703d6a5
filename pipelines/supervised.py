"""The supervised pipeline: the same stage components as text-to-image, minus generation scoring.

preflight -> ingest_split -> build_cache -> train -> evaluate -> register_model

Each stage picks its behaviour from the `task` parameter (classification,
regression or segmentation); there is no copy of a component per task.
As for text-to-image, `pipeline_for(config)` applies the config's `platform` section (what
`trainflow compile` uses) and `supervised_pipeline` is the DAG without Kubernetes settings,
for kfp.local; see pipelines/pipeline_settings.py for volumes and retries.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Model

from components.build_cache.component import build_cache
from components.evaluate.component import evaluate
from components.ingest_split.component import ingest_split
from components.preflight.component import preflight
from components.register_model.component import register_model
from components.train.component import train
from pipelines.pipeline_settings import PodSettings, place, stage_arguments

PIPELINE_NAME = "trainflow-supervised"
# The stages a local run reports, in order (preflight is counted apart).
STAGES = ("ingest_split", "build_cache", "train", "evaluate", "register_model")

__all__ = ["PIPELINE_NAME", "SupervisedOutputs", "build_supervised_pipeline", "pipeline_arguments", "pipeline_for",
           "supervised_pipeline"]


class SupervisedOutputs(NamedTuple):
    dataset: Dataset
    model: Model
    tensorboard: Artifact
    eval_metrics: Metrics
    registration: Markdown


def build_supervised_pipeline(settings: PodSettings):
    """The pipeline with `settings` applied to every task (PodSettings() = no Kubernetes settings)."""
    launcher_only = settings.distributed_train  # the train step then waits for a PyTorchJob/TrainJob on CPU

    @dsl.pipeline(name=PIPELINE_NAME, description="Train a classifier, regressor or segmenter; evaluate on the test split; register it.")
    def supervised_pipeline(
        run_name: str,
        seed: int,
        task: str,
        ingest_config: dict,
        model_config: dict,
        cache_config: dict,
        train_config: dict,
        evaluate_config: dict,
        register_config: dict,
        params: dict,
        checkpoint_dir: str = "",
    ) -> SupervisedOutputs:
        checks = preflight(task=task, ingest_config=ingest_config, model_config=model_config, cache_config=cache_config,
                           train_config=train_config, evaluate_config=evaluate_config, register_config=register_config,
                           run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **settings.platform_argument())
        # Never retried and never cached: it looks at the data and weights as they are now.
        place(checks.set_caching_options(False), settings, cpu="1", memory="2G")

        ingest_task = ingest_split(ingest_config=ingest_config, seed=seed, task=task).after(checks)
        # New data arrives under the same path: a cached ingest would silently reuse old data.
        place(ingest_task.set_caching_options(False), settings, cpu="2", memory="8G")

        cache_task = build_cache(dataset=ingest_task.outputs["dataset"], model_config=model_config,
                                 cache_config=cache_config, task=task)
        place(cache_task, settings, cpu="4", memory="16G", shm=True)

        train_task = train(cache=cache_task.outputs["cache"], model_config=model_config, train_config=train_config,
                           seed=seed, task=task, checkpoint_dir=checkpoint_dir, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                           task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER, **settings.platform_argument())
        if launcher_only:
            place(train_task, settings, cpu="1", memory="4G", retries=2, mlflow=settings.train_logs_to_mlflow)
        else:
            place(train_task, settings, cpu="8", memory="32G", gpu=True, shm=True, retries=2,
                  mlflow=settings.train_logs_to_mlflow, training_metrics=True)

        evaluate_task = evaluate(cache=cache_task.outputs["cache"], model=train_task.outputs["model"],
                                 model_config=model_config, evaluate_config=evaluate_config, seed=seed, task=task,
                                 pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        # mlflow: its numbers go to the `evaluate` child of the pipeline run's MLflow parent run.
        place(evaluate_task, settings, cpu="4", memory="16G", shm=True, mlflow=True)

        register_task = register_model(
            dataset=ingest_task.outputs["dataset"], model=train_task.outputs["model"],
            eval_metrics=evaluate_task.outputs["metrics"], register_config=register_config, run_name=run_name,
            params=params,
            # beat_champion gates: the candidate's per-record outputs, and the test split to run the champion on.
            predictions=evaluate_task.outputs["predictions"], cache=cache_task.outputs["cache"], task=task, seed=seed,
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, pipeline_name=PIPELINE_NAME,
        )
        place(register_task, settings, cpu="1", memory="4G", retries=3, volumes=settings.register_needs_volumes,
              mlflow=True)

        return SupervisedOutputs(
            dataset=ingest_task.outputs["dataset"], model=train_task.outputs["model"],
            tensorboard=train_task.outputs["tensorboard"], eval_metrics=evaluate_task.outputs["metrics"],
            registration=register_task.outputs["report"],
        )

    return supervised_pipeline


def pipeline_arguments(config, tracking_uri: str | None = None) -> dict:
    """The pipeline's parameters from a validated RunConfig: the stages' sections plus the task's name."""
    return {**stage_arguments(config, tracking_uri), "task": config.task}


def pipeline_for(config):
    """The pipeline to compile for a cluster: the config's platform section and train options applied."""
    return build_supervised_pipeline(PodSettings.for_config(config))


supervised_pipeline = build_supervised_pipeline(PodSettings())
