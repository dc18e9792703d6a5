"""The supervised pipeline: the same stage components as text-to-image, minus generation scoring.

ingest_split -> build_cache -> train -> evaluate -> register_model

Each stage picks its behaviour from the `task` parameter (classification,
regression or segmentation); there is no copy of a component per task.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Model

from components.build_cache.component import build_cache
from components.evaluate.component import evaluate
from components.ingest_split.component import ingest_split
from components.register_model.component import register_model
from components.train.component import train
from pipelines.pipeline_settings import on_gpu_node, pipeline_arguments

PIPELINE_NAME = "trainflow-supervised"

__all__ = ["PIPELINE_NAME", "SupervisedOutputs", "pipeline_arguments", "supervised_pipeline"]


class SupervisedOutputs(NamedTuple):
    dataset: Dataset
    model: Model
    tensorboard: Artifact
    eval_metrics: Metrics
    registration: Markdown


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
    ingest_task = ingest_split(ingest_config=ingest_config, seed=seed, task=task)
    # New data arrives under the same path: a cached ingest would silently reuse old data.
    ingest_task.set_caching_options(False).set_cpu_request("2").set_memory_request("8G")

    cache_task = build_cache(dataset=ingest_task.outputs["dataset"], model_config=model_config,
                             cache_config=cache_config, task=task)
    cache_task.set_cpu_request("4").set_memory_request("16G")

    train_task = train(cache=cache_task.outputs["cache"], model_config=model_config, train_config=train_config,
                       seed=seed, task=task, checkpoint_dir=checkpoint_dir)
    on_gpu_node(train_task, cpu="8", memory="32G", retries=2)

    evaluate_task = evaluate(cache=cache_task.outputs["cache"], model=train_task.outputs["model"],
                             model_config=model_config, evaluate_config=evaluate_config, seed=seed, task=task)
    evaluate_task.set_cpu_request("4").set_memory_request("16G")

    register_task = register_model(
        dataset=ingest_task.outputs["dataset"], model=train_task.outputs["model"],
        eval_metrics=evaluate_task.outputs["metrics"], register_config=register_config, run_name=run_name,
        params=params,
    )
    register_task.set_cpu_request("1").set_memory_request("4G").set_retry(num_retries=3, backoff_duration="30s")

    return SupervisedOutputs(
        dataset=ingest_task.outputs["dataset"], model=train_task.outputs["model"],
        tensorboard=train_task.outputs["tensorboard"], eval_metrics=evaluate_task.outputs["metrics"],
        registration=register_task.outputs["report"],
    )
