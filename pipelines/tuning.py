"""The tuning pipeline: split and cache once, N trial workers on one study, then refit the best and register it.

ingest_split -> build_cache -> ParallelFor(workers, parallelism=tune.workers): tune_trials
             -> tune_summary (report, best parameters) -> [refit_cache] -> train (refit)
             -> evaluate (the test split's first use)
             -> register_model

Every worker asks the shared study (Optuna journal on the workspace PVC, or a database whose URL comes from
a Kubernetes Secret) for the next trial, so the fan-out count bounds parallelism, not the trial count.
The refit trains on train (early stopping on val), or with `tune.refit: train_val` on its own cache where the
val records are training records too, for the best trial's epochs (refit_cache -> train).
"""

from kfp import dsl, kubernetes

from components.build_cache.component import build_cache
from components.evaluate.component import evaluate
from components.ingest_split.component import ingest_split
from components.refit_cache.component import refit_cache
from components.register_model.component import register_model
from components.train.component import train
from components.tune_summary.component import tune_summary
from components.tune_trials.component import tune_trials
from pipelines.pipeline_settings import PodSettings, place, stage_arguments

PIPELINE_NAME = "trainflow-tuning"


def build_tuning_pipeline(settings: PodSettings, workers: int, storage_secret=None, refit_on_train_val: bool = False):
    """The pipeline with `workers` trial workers (ParallelFor parallelism); storage_secret: (Secret, key, env var).

    refit_on_train_val (tune.refit: train_val): the refit trains on its own cache, train+val, for the best
    trial's epochs (tune_summary's train section says so), and is evaluated on the same test records.
    """

    @dsl.pipeline(name=PIPELINE_NAME, description="Hyperparameter search (Optuna) over trial workers; refit, evaluate and register the best.")
    def tuning_pipeline(run_name: str, seed: int, task: str, ingest_config: dict, model_config: dict, cache_config: dict,
                        evaluate_config: dict, register_config: dict, run_config: dict, study_root: str,
                        checkpoint_dir: str = ""):
        ingest_task = place(ingest_split(ingest_config=ingest_config, seed=seed, task=task).set_caching_options(False),
                            settings, cpu="2", memory="8G")
        cache_task = place(build_cache(dataset=ingest_task.outputs["dataset"], model_config=model_config,
                                       cache_config=cache_config, task=task), settings, cpu="4", memory="16G", shm=True)
        with dsl.ParallelFor(items=list(range(workers)), parallelism=workers) as worker:
            trials = tune_trials(cache=cache_task.outputs["cache"], run_config=run_config, study_root=study_root,
                                 worker=worker).set_caching_options(False)
            place(trials, settings, cpu="8", memory="32G", gpu=True, shm=True, retries=2)
            _storage_secret(trials, storage_secret)
        summary = tune_summary(cache=cache_task.outputs["cache"], run_config=run_config,
                               study_root=study_root).after(trials).set_caching_options(False)
        place(summary, settings, cpu="1", memory="4G")
        _storage_secret(summary, storage_secret)
        refit_data = cache_task
        if refit_on_train_val:  # the val records join train; the test split is the same records as the study's
            refit_data = place(refit_cache(dataset=ingest_task.outputs["dataset"], model_config=model_config,
                                           cache_config=cache_config, task=task),
                               settings, cpu="4", memory="16G", shm=True)
        refit = train(cache=refit_data.outputs["cache"], model_config=summary.outputs["model_config"],
                      train_config=summary.outputs["train_config"], seed=seed, task=task, checkpoint_dir=checkpoint_dir,
                      run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
                      **settings.platform_argument())
        place(refit, settings, cpu="8", memory="32G", gpu=True, shm=True, retries=2)
        scored = evaluate(cache=refit_data.outputs["cache"], model=refit.outputs["model"],
                          model_config=summary.outputs["model_config"], evaluate_config=evaluate_config, seed=seed, task=task)
        place(scored, settings, cpu="4", memory="16G", shm=True)
        registered = register_model(dataset=ingest_task.outputs["dataset"], model=refit.outputs["model"],
                                    eval_metrics=scored.outputs["metrics"], register_config=register_config,
                                    run_name=run_name, params=run_config, predictions=scored.outputs["predictions"],
                                    cache=refit_data.outputs["cache"], task=task, seed=seed,
                                    pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, pipeline_name=PIPELINE_NAME)
        place(registered, settings, cpu="1", memory="4G", retries=3, volumes=settings.register_needs_volumes, mlflow=True)

    return tuning_pipeline


def _storage_secret(task: dsl.PipelineTask, storage_secret) -> None:
    if storage_secret is not None:  # the database URL carries credentials: from the Secret, never a parameter
        secret, key, env = storage_secret
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={key: env})


def pipeline_for(config):
    """The pipeline to compile: the platform section, tune.workers and the storage Secret applied."""
    tune = config.tune
    secret = (tune.storage.secret, tune.storage.secret_key, tune.storage.url_env) if tune.storage.kind == "rdb" and tune.storage.secret else None
    return build_tuning_pipeline(PodSettings.for_config(config), tune.workers, secret,
                                 refit_on_train_val=tune.refit == "train_val")


def pipeline_arguments(config, tracking_uri=None) -> dict:
    from trainflow.config import section_payload

    shared = stage_arguments(config, tracking_uri)
    return {"run_name": config.run_name, "seed": config.seed, "task": config.task,
            **{k: shared[k] for k in ("ingest_config", "model_config", "cache_config", "evaluate_config", "register_config")},
            "run_config": section_payload(config), "study_root": config.platform.workspace_mount_path}
