"""What both pipelines share: GPU node settings and the mapping from a run config to parameters."""

from kfp import dsl, kubernetes

GPU_RESOURCE = "nvidia.com/gpu"


def on_gpu_node(task: dsl.PipelineTask, cpu: str, memory: str, retries: int) -> dsl.PipelineTask:
    """One NVIDIA GPU, CPU/memory requests, retries with backoff, and the usual GPU-node taint toleration."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    task.set_cpu_request(cpu).set_memory_request(memory)
    task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0)
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    return task


def pipeline_arguments(config, tracking_uri: str | None = None) -> dict:
    """Map a validated RunConfig onto the pipeline's parameters (one dict per section)."""
    from trainflow.config import section_payload

    register = section_payload(config.registration)
    if tracking_uri is not None and not register.get("tracking_uri"):
        register["tracking_uri"] = tracking_uri
    arguments = {
        "run_name": config.run_name,
        "seed": config.seed,
        "ingest_config": section_payload(config.ingest),
        "model_config": section_payload(config.model),
        "cache_config": section_payload(config.cache),
        "train_config": section_payload(config.train),
        "evaluate_config": section_payload(config.evaluate),
        "register_config": register,
        "params": section_payload(config),
    }
    if config.task == "text_to_image":
        arguments["score_config"] = section_payload(config.score)
    else:
        arguments["task"] = config.task
    return arguments
