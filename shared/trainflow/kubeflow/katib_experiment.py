"""`trainflow compile --katib`: the config's `tune` section as a Katib Experiment (kubeflow.org/v1beta1).

Built from the Katib SDK's typed models (kubeflow-katib 0.14). Each Katib trial is a batch/v1 Job whose one
container runs `python -m trainflow.experiments.katib_trial` with the sampled values; it trains through the
same engine as `trainflow tune`'s trials (train and val splits only) and prints the objective to stdout as
`<metric>=<value>` lines, which Katib's StdOut metrics collector reads: one line per validation (what
Katib's median-stop early stopping compares) and, last, the value at the best checkpoint (the trial's
score, metric strategy `latest`, as trainflow scores its own trials). The split, cache and each trial's
checkpoints live on the workspace PVC under <workspace>/katib/<study>/.

Katib 0.14's feasible space has no log-uniform distribution, so a `log: true` range is searched as its
base-10 logarithm (parameter `log10-<name>`) and the trial takes 10**x: the same log-uniform search.
What Katib cannot express is refused with one sentence: conditional parameters, several objectives
(Katib optimises one), successive-halving/Hyperband pruners (Katib early-stops with medianstop only),
and a wall-time-only budget.

Katib's own CRD declares no schema (`x-kubernetes-preserve-unknown-fields`), so `katib_problems` checks the
Experiment against a closed JSON Schema derived from the SDK's models (see job_schema), the trial Job
against the kubernetes client's batch/v1 models, and the rules of Katib's admission webhook
(pkg/webhook/v1beta1/experiment/validator) that a rendered Experiment could break.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from trainflow.config import RunConfig, section_payload
from trainflow.config.tuning import ParamRange, objective_directions
from trainflow.errors import ConfigError

from trainflow.kubeflow.job_schema import KATIB_API_VERSION as API_VERSION
CONTAINER = "training-container"
# Katib's suggestion services by name (katib-config's default algorithms).
ALGORITHMS = {"tpe": "tpe", "random": "random", "grid": "grid", "cmaes": "cmaes"}
TRIAL_SECTIONS = ("run_name", "task", "seed", "ingest", "model", "cache", "train", "tune")
TRIAL_PARAMETER = re.compile(r"\$\{trialParameters\.(.+?)\}")
EXPERIMENT_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def katib_parameter_name(path: str, spec: ParamRange, grid: bool) -> str:
    """e.g. train-optimizer-learning-rate; log10-... for a float log range searched as its logarithm."""
    name = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")
    return f"log10-{name}" if spec.log and spec.kind == "float" and not grid else name


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value)) if abs(value) < 1e15 else repr(value)


def _parameter(path: str, spec: ParamRange, grid: bool):
    from kubeflow.katib import models

    name = katib_parameter_name(path, spec, grid)
    if spec.kind == "categorical":
        return models.V1beta1ParameterSpec(name=name, parameter_type="categorical", feasible_space=models.V1beta1FeasibleSpace(
            list=[json.dumps(v) if not isinstance(v, str) else v for v in spec.categorical or []]))
    if grid or (spec.kind == "int" and spec.log):  # the grid's own values; an int log range as its discrete values
        values = spec.grid_values() or []
        return models.V1beta1ParameterSpec(name=name, parameter_type="discrete",
                                           feasible_space=models.V1beta1FeasibleSpace(list=[_number(v) for v in values]))
    low, high = spec.float_range or spec.int_range  # type: ignore[misc]
    if spec.log:
        low, high = math.log10(low), math.log10(high)
    space = models.V1beta1FeasibleSpace(min=_number(low), max=_number(high),
                                        step=_number(spec.step) if spec.step is not None else None)
    return models.V1beta1ParameterSpec(name=name, parameter_type="double" if spec.kind == "float" else "int",
                                       feasible_space=space)


def _check_expressible(config: RunConfig) -> None:
    tune = config.tune
    if tune is None:
        raise ConfigError("--katib renders the config's tune section, and it has none; add one (see README, Experiments)")
    conditional = [path for path, spec in tune.params.items() if spec.when]
    if conditional:
        raise ConfigError(f"tune.params.{conditional[0]}: Katib has no conditional parameters; drop `when` for --katib "
                          "or run the study with trainflow tune")
    if tune.objectives and len(tune.objectives) > 1:
        raise ConfigError("tune.objectives: Katib optimises one objective metric; keep one for --katib, or run the "
                          "multi-objective study with trainflow tune")
    if tune.pruner in ("successive_halving", "hyperband"):
        raise ConfigError(f"tune.pruner: Katib early-stops trials with medianstop only, not {tune.pruner}; use median "
                          "or none for --katib")
    if tune.pruner in (None, "median") and tune.pruner_warmup_epochs and config.train.validation.every_n_steps:
        raise ConfigError("tune.pruner_warmup_epochs: Katib's medianstop counts validations, and how many "
                          "train.validation.every_n_steps makes in an epoch depends on the dataset's size; for "
                          "--katib validate every epoch (every_n_steps: null) or set the warm-up to 0")
    if tune.trials is None:
        raise ConfigError("tune.trials: Katib budgets an experiment in trials (maxTrialCount), not wall time; set "
                          "tune.trials for --katib")


def trial_command(config: RunConfig, study_root: str, names: dict[str, str]) -> list[str]:
    """The trial container's command: the run config (without tune/register) and one --param per sampled field."""
    tune = config.tune
    assert tune is not None
    full = section_payload(config)
    # What a trial reads; the register section (tracking URIs) and the platform stay out: trials never register.
    payload = {key: full[key] for key in TRIAL_SECTIONS if key in full}
    payload["register"] = {"model_name": config.registration.model_name}
    command = ["python", "-m", "trainflow.experiments.katib_trial", "--root", study_root,
               "--trial", "${trialSpec.Name}", "--config-json", json.dumps(payload, sort_keys=True)]
    for path, spec in tune.params.items():
        value = "${trialParameters.%s}" % names[path]
        command += ["--param", f"{path}=log10:{value}" if names[path].startswith("log10-") else f"{path}={value}"]
    return command


def trial_job(config: RunConfig, command: list[str], image: str) -> dict[str, Any]:
    """The batch/v1 Job each Katib trial runs (no name: Katib names it after the trial)."""
    from kubernetes import client as k8s

    from trainflow.kubeflow.train_launch import worker_environment

    platform = config.platform
    env, secrets = worker_environment(platform, with_mlflow=False)
    claims = [("workspace", platform.workspace_pvc, platform.workspace_mount_path)]
    if platform.dataset_pvc:
        claims.append(("datasets", platform.dataset_pvc, platform.dataset_mount_path))
    if platform.weights_cache_pvc:
        claims.append(("weights-cache", platform.weights_cache_pvc, platform.weights_cache_mount_path))
    gpu = config.train.device != "cpu"
    container = k8s.V1Container(
        name=CONTAINER, image=image, command=command,
        env=[k8s.V1EnvVar(name=k, value=v) for k, v in sorted(env.items())] or None,
        volume_mounts=[k8s.V1VolumeMount(name=n, mount_path=p) for n, _, p in claims],
        resources=k8s.V1ResourceRequirements(limits={platform.gpu_resource: "1"}) if gpu else None)
    pod = k8s.V1PodSpec(
        containers=[container], restart_policy="Never", service_account_name=platform.service_account,
        volumes=[k8s.V1Volume(name=n, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=c))
                 for n, c, _ in claims],
        node_selector=dict(platform.node_selector) or None if gpu else None,
        tolerations=[k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect)
                     for t in platform.gpu_tolerations] or None if gpu else None)
    job = k8s.V1Job(api_version="batch/v1", kind="Job",
                    spec=k8s.V1JobSpec(backoff_limit=0, template=k8s.V1PodTemplateSpec(spec=pod)))
    return k8s.ApiClient().sanitize_for_serialization(job)


def _reports_before_stopping(config: RunConfig) -> int:
    """medianstop's start_step counts a trial's reports; the median pruner's warm-up counts epochs.

    With epoch-end validations report k comes after k epochs, so the first report that may stop a trial is the
    first at or past the warm-up (_check_expressible refuses a warm-up with step-counted validations).
    """
    warmup = config.tune.pruner_warmup_epochs if config.tune else 0.0
    return max(1, math.ceil(warmup))


def katib_experiment(config: RunConfig, image: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    """The Experiment as a plain dict (what `kubectl apply` takes); ConfigError for what Katib cannot express."""
    from kubeflow.katib import ApiClient, models
    from kubernetes import client as k8s

    import trainflow

    _check_expressible(config)
    tune = config.tune
    assert tune is not None
    name = re.sub(r"[^a-z0-9-]+", "-", (tune.study_name or config.run_name).lower()).strip("-")[:63].rstrip("-")
    if not EXPERIMENT_NAME.fullmatch(name):
        raise ConfigError(f"tune.study_name: {name!r} does not make a Katib Experiment name (a lower-case letter "
                          "first, then letters, digits and '-'); set tune.study_name")
    (metric, direction), = objective_directions(tune, config.train.early_stopping.monitor)
    names = {path: katib_parameter_name(path, spec, tune.sampler == "grid") for path, spec in tune.params.items()}
    image = image or config.platform.image or os.environ.get("TRAINFLOW_IMAGE") or f"ghcr.io/trainflow/trainflow:{trainflow.__version__}"
    study_root = f"{config.platform.workspace_mount_path}/katib/{name}"
    job = trial_job(config, trial_command(config, study_root, names), image)
    early = None
    if tune.pruner in (None, "median"):
        early = models.V1beta1EarlyStoppingSpec(algorithm_name="medianstop", algorithm_settings=[
            models.V1beta1EarlyStoppingSetting(name="min_trials_required", value=str(max(1, tune.pruner_startup_trials))),
            models.V1beta1EarlyStoppingSetting(name="start_step", value=str(_reports_before_stopping(config)))])
    seed = tune.seed if tune.seed is not None else config.seed
    settings = [] if tune.sampler == "grid" else [models.V1beta1AlgorithmSetting(name="random_state", value=str(seed))]
    experiment = models.V1beta1Experiment(
        api_version=API_VERSION, kind="Experiment",
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "trainflow"}),
        spec=models.V1beta1ExperimentSpec(
            objective=models.V1beta1ObjectiveSpec(
                type=direction, objective_metric_name=metric,
                metric_strategies=[models.V1beta1MetricStrategy(name=metric, value="latest")]),
            algorithm=models.V1beta1AlgorithmSpec(algorithm_name=ALGORITHMS[tune.sampler],
                                                  algorithm_settings=settings or None),
            early_stopping=early,
            parameters=[_parameter(path, spec, tune.sampler == "grid") for path, spec in tune.params.items()],
            max_trial_count=tune.trials, parallel_trial_count=min(tune.workers, tune.trials),
            max_failed_trial_count=tune.trials,
            metrics_collector_spec=models.V1beta1MetricsCollectorSpec(collector=models.V1beta1CollectorSpec(kind="StdOut")),
            trial_template=models.V1beta1TrialTemplate(
                primary_container_name=CONTAINER, retain=False,
                success_condition='status.conditions.#(type=="Complete")#|#(status=="True")#',
                failure_condition='status.conditions.#(type=="Failed")#|#(status=="True")#',
                trial_parameters=[models.V1beta1TrialParameterSpec(name=names[path], reference=names[path],
                                                                   description=f"{path} ({spec.kind}"
                                                                   f"{', base-10 log' if names[path].startswith('log10-') else ''})")
                                  for path, spec in tune.params.items()],
                trial_spec=job)))
    body = ApiClient().sanitize_for_serialization(experiment)
    problems = katib_problems(body)
    if problems:  # a rendering fault of ours, not the user's config: say what broke
        raise ConfigError(f"the rendered Katib Experiment breaks its schema: {problems[0]}")
    return body


def katib_problems(body: Any) -> list[str]:
    """Every problem with a Katib Experiment body: schema (SDK models), trial Job (batch/v1), webhook rules."""
    from trainflow.kubeflow.job_schema import custom_resource_problems, openapi_object_problems

    problems = custom_resource_problems(body)
    if problems or not isinstance(body, dict):
        return problems
    spec = body["spec"]
    if not EXPERIMENT_NAME.fullmatch(body["metadata"]["name"]):
        problems.append(f"metadata.name: {body['metadata']['name']!r} is not a Katib Experiment name")
    template = spec.get("trialTemplate") or {}
    job = template.get("trialSpec")
    problems += [f"spec.trialTemplate.trialSpec.{p}" for p in openapi_object_problems(job, "V1Job")]
    if not isinstance(job, dict) or job.get("apiVersion") != "batch/v1" or job.get("kind") != "Job":
        problems.append("spec.trialTemplate.trialSpec: apiVersion and kind must be batch/v1 Job")
        return problems
    if (job.get("metadata") or {}).get("name") or (job.get("metadata") or {}).get("namespace"):
        problems.append("spec.trialTemplate.trialSpec.metadata: name and namespace must be left to Katib")
    containers = [c["name"] for c in job["spec"]["template"]["spec"]["containers"]]
    if template.get("primaryContainerName") not in containers:
        problems.append(f"spec.trialTemplate.primaryContainerName: {template.get('primaryContainerName')!r} is not a "
                        f"container of the trial Job ({', '.join(containers)})")
    if not spec.get("objective", {}).get("objectiveMetricName"):
        problems.append("spec.objective.objectiveMetricName: must be set")
    declared = {p["name"]: p for p in spec.get("parameters", [])}
    text = json.dumps(job)
    trial_parameters = template.get("trialParameters") or []
    for index, parameter in enumerate(trial_parameters):
        if parameter["reference"] not in declared:
            problems.append(f"spec.trialTemplate.trialParameters[{index}].reference: {parameter['reference']!r} is not in spec.parameters")
        if "${trialParameters.%s}" % parameter["name"] not in text:
            problems.append(f"spec.trialTemplate.trialParameters[{index}].name: {parameter['name']!r} is not used in the trial Job")
    unknown = set(TRIAL_PARAMETER.findall(text)) - {p["name"] for p in trial_parameters}
    if unknown:
        problems.append(f"spec.trialTemplate.trialSpec: uses ${{trialParameters.{sorted(unknown)[0]}}}, which trialParameters lacks")
    for index, parameter in enumerate(spec.get("parameters", [])):
        space = parameter.get("feasibleSpace") or {}
        numeric = parameter["parameterType"] in ("double", "int")
        if numeric and ("list" in space or "min" not in space or "max" not in space):
            problems.append(f"spec.parameters[{index}].feasibleSpace: {parameter['parameterType']} takes min and max, not a list")
        if not numeric and (set(space) & {"min", "max", "step"} or not space.get("list")):
            problems.append(f"spec.parameters[{index}].feasibleSpace: {parameter['parameterType']} takes a list only")
    return problems
