"""The text-to-image fine-tuning pipeline: a preflight check, six stages, typed artifacts, one direction.

preflight -> ingest_split -> build_cache -> train -> evaluate -> score_generation -> register_model

Every parameter is one section of the run config (trainflow.config.RunConfig),
passed as a dict; `trainflow compile --config` bakes a config in as defaults,
so a run from the Kubeflow UI or on a schedule needs no arguments.

The config's `platform` section shapes the pods (volumes, node pool, Secret) at compile time,
so the pipeline is built by a factory: `pipeline_for(config)` is what `trainflow compile` and
`trainflow submit` compile; `text_to_image_pipeline` is the same DAG without Kubernetes
settings, for kfp.local. Why named PVCs and a preflight task: pipelines/pipeline_settings.py.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Metrics, Model

from components.build_cache.component import build_cache
from components.evaluate.component import evaluate
from components.ingest_split.component import ingest_split
from components.preflight.component import preflight
from components.register_model.component import register_model
from components.score_generation.component import score_generation
from components.train.component import train
from pipelines.pipeline_settings import PodSettings, place, stage_arguments

PIPELINE_NAME = "trainflow-text-to-image"
TASK = "text_to_image"
# The stages a local run reports, in order (preflight is counted apart).
STAGES = ("ingest_split", "build_cache", "train", "evaluate", "score_generation", "register_model")

__all__ = ["PIPELINE_NAME", "PipelineOutputs", "build_text_to_image_pipeline", "pipeline_arguments", "pipeline_for",
           "text_to_image_pipeline"]


class PipelineOutputs(NamedTuple):
    dataset: Dataset
    model: Model
    tensorboard: Artifact
    eval_metrics: Metrics
    score_metrics: Metrics
    samples: HTML
    registration: Markdown


def build_text_to_image_pipeline(settings: PodSettings):
    """The pipeline with `settings` applied to every task (PodSettings() = no Kubernetes settings)."""
    launcher_only = settings.distributed_train  # the train step then waits for a PyTorchJob/TrainJob on CPU

    @dsl.pipeline(name=PIPELINE_NAME, description="Fine-tune a Stable-Diffusion-architecture model, evaluate, score and register it.")
    def text_to_image_pipeline(
        run_name: str,
        seed: int,
        ingest_config: dict,
        model_config: dict,
        cache_config: dict,
        train_config: dict,
        evaluate_config: dict,
        score_config: dict,
        register_config: dict,
        params: dict,
        checkpoint_dir: str = "",
    ) -> PipelineOutputs:
        checks = preflight(task=TASK, ingest_config=ingest_config, model_config=model_config, cache_config=cache_config,
                           train_config=train_config, evaluate_config=evaluate_config, score_config=score_config,
                           register_config=register_config, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                           **settings.platform_argument())
        # Never retried and never cached: it looks at the data and weights as they are now.
        place(checks.set_caching_options(False), settings, cpu="1", memory="2G")

        ingest_task = ingest_split(ingest_config=ingest_config, seed=seed, task=TASK).after(checks)
        # New data arrives under the same path: a cached ingest would silently reuse old data.
        place(ingest_task.set_caching_options(False), settings, cpu="2", memory="8G")

        cache_task = build_cache(dataset=ingest_task.outputs["dataset"], model_config=model_config,
                                 cache_config=cache_config, task=TASK)
        place(cache_task, settings, cpu="4", memory="16G", gpu=True, shm=True, retries=2)

        train_task = train(
            cache=cache_task.outputs["cache"], model_config=model_config, train_config=train_config, seed=seed,
            task=TASK, checkpoint_dir=checkpoint_dir, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER, **settings.platform_argument(),
        )
        if launcher_only:
            place(train_task, settings, cpu="1", memory="4G", retries=2, mlflow=settings.train_logs_to_mlflow)
        else:
            place(train_task, settings, cpu="8", memory="32G", gpu=True, shm=True, retries=2,
                  mlflow=settings.train_logs_to_mlflow, training_metrics=True)

        evaluate_task = evaluate(
            cache=cache_task.outputs["cache"], model=train_task.outputs["model"], model_config=model_config,
            evaluate_config=evaluate_config, seed=seed, task=TASK, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        # mlflow: evaluate's and score's numbers go to their children of the pipeline run's MLflow parent run.
        place(evaluate_task, settings, cpu="4", memory="16G", gpu=True, shm=True, retries=2, mlflow=True)

        score_task = score_generation(
            dataset=ingest_task.outputs["dataset"], model=train_task.outputs["model"], model_config=model_config,
            score_config=score_config, seed=seed, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        place(score_task, settings, cpu="8", memory="32G", gpu=True, shm=True, retries=2, mlflow=True)

        register_task = register_model(
            dataset=ingest_task.outputs["dataset"], model=train_task.outputs["model"],
            eval_metrics=evaluate_task.outputs["metrics"], score_metrics=score_task.outputs["metrics"],
            register_config=register_config, run_name=run_name, params=params, task=TASK,
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, pipeline_name=PIPELINE_NAME,
        )
        place(register_task, settings, cpu="1", memory="4G", retries=3, volumes=False, mlflow=True)

        return PipelineOutputs(
            dataset=ingest_task.outputs["dataset"], model=train_task.outputs["model"],
            tensorboard=train_task.outputs["tensorboard"],
            eval_metrics=evaluate_task.outputs["metrics"], score_metrics=score_task.outputs["metrics"],
            samples=score_task.outputs["report"], registration=register_task.outputs["report"],
        )

    return text_to_image_pipeline


def pipeline_arguments(config, tracking_uri: str | None = None) -> dict:
    """The pipeline's parameters from a validated RunConfig: the stages' sections plus the score section."""
    from trainflow.config import section_payload

    return {**stage_arguments(config, tracking_uri), "score_config": section_payload(config.score)}


def pipeline_for(config):
    """The pipeline to compile for a cluster: the config's platform section and train options applied."""
    return build_text_to_image_pipeline(PodSettings.for_config(config))


text_to_image_pipeline = build_text_to_image_pipeline(PodSettings())
