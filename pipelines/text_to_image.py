"""The text-to-image fine-tuning pipeline: six stages, typed artifacts, one direction.

ingest_split -> build_cache -> train -> evaluate -> score_generation -> register_model

Every parameter is one section of the run config (trainflow.config.RunConfig),
passed as a dict; `trainflow compile --config` bakes a config in as defaults,
so a run from the Kubeflow UI or on a schedule needs no arguments.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Metrics, Model

from components.build_cache.component import build_cache
from components.evaluate.component import evaluate
from components.ingest_split.component import ingest_split
from components.register_model.component import register_model
from components.score_generation.component import score_generation
from components.train.component import train
from pipelines.pipeline_settings import on_gpu_node, pipeline_arguments

PIPELINE_NAME = "trainflow-text-to-image"
TASK = "text_to_image"

__all__ = ["PIPELINE_NAME", "PipelineOutputs", "pipeline_arguments", "text_to_image_pipeline"]


class PipelineOutputs(NamedTuple):
    dataset: Dataset
    model: Model
    tensorboard: Artifact
    eval_metrics: Metrics
    score_metrics: Metrics
    samples: HTML
    registration: Markdown


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
    ingest_task = ingest_split(ingest_config=ingest_config, seed=seed, task=TASK)
    # New data arrives under the same path: a cached ingest would silently reuse old data.
    ingest_task.set_caching_options(False).set_cpu_request("2").set_memory_request("8G")

    cache_task = build_cache(dataset=ingest_task.outputs["dataset"], model_config=model_config, cache_config=cache_config,
                             task=TASK)
    on_gpu_node(cache_task, cpu="4", memory="16G", retries=2)

    train_task = train(
        cache=cache_task.outputs["cache"], model_config=model_config, train_config=train_config, seed=seed,
        task=TASK, checkpoint_dir=checkpoint_dir,
    )
    on_gpu_node(train_task, cpu="8", memory="32G", retries=2)

    evaluate_task = evaluate(
        cache=cache_task.outputs["cache"], model=train_task.outputs["model"], model_config=model_config,
        evaluate_config=evaluate_config, seed=seed, task=TASK,
    )
    on_gpu_node(evaluate_task, cpu="4", memory="16G", retries=2)

    score_task = score_generation(
        dataset=ingest_task.outputs["dataset"], model=train_task.outputs["model"], model_config=model_config,
        score_config=score_config, seed=seed,
    )
    on_gpu_node(score_task, cpu="8", memory="32G", retries=2)

    register_task = register_model(
        dataset=ingest_task.outputs["dataset"], model=train_task.outputs["model"],
        eval_metrics=evaluate_task.outputs["metrics"], score_metrics=score_task.outputs["metrics"],
        register_config=register_config, run_name=run_name, params=params,
    )
    register_task.set_cpu_request("1").set_memory_request("4G").set_retry(num_retries=3, backoff_duration="30s")

    return PipelineOutputs(
        dataset=ingest_task.outputs["dataset"], model=train_task.outputs["model"],
        tensorboard=train_task.outputs["tensorboard"],
        eval_metrics=evaluate_task.outputs["metrics"], score_metrics=score_task.outputs["metrics"],
        samples=score_task.outputs["report"], registration=register_task.outputs["report"],
    )
