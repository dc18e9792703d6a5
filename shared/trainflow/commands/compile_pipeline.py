"""`trainflow compile`: the pipeline YAML for a Kubeflow cluster, with a run config baked in as parameter defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainflow.errors import UserFacingError


def compile_command(args: argparse.Namespace) -> int:
    from trainflow.config import load_config
    from trainflow.kubeflow.pipeline_package import compile_pipeline_package, default_pipeline

    config = load_config(args.config, check_local_paths=False)  # paths are the pods' paths
    if getattr(args, "katib", False):
        return _compile_katib(config, args)
    if getattr(args, "namespace", None):
        raise UserFacingError("--namespace applies to --katib; a pipeline's namespace is chosen when it is submitted")
    pipeline = args.pipeline or default_pipeline(config)
    output = compile_pipeline_package(config, pipeline, Path(args.output or f"build/{pipeline.replace('-', '_')}.yaml"))
    print(f"trainflow: wrote {output} ({pipeline} pipeline, defaults from {args.config}); upload it in the Kubeflow UI, "
          "or use `trainflow submit`")
    return 0


def _compile_katib(config, args: argparse.Namespace) -> int:
    import yaml

    from trainflow.atomic_files import atomic_write_text
    from trainflow.kubeflow.katib_experiment import katib_experiment

    if args.pipeline:
        raise UserFacingError("--pipeline and --katib exclude each other: --katib renders the tune section as a Katib Experiment")
    body = katib_experiment(config, namespace=args.namespace)
    output = Path(args.output or "build/katib_experiment.yaml")
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, yaml.safe_dump(body, sort_keys=False))
    spec = body["spec"]
    print(f"trainflow: wrote {output} (Katib Experiment {body['metadata']['name']}: {spec['algorithm']['algorithmName']}, "
          f"{spec['maxTrialCount']} trials, {spec['parallelTrialCount']} at a time, objective "
          f"{spec['objective']['objectiveMetricName']}); apply it with kubectl apply -f {output}")
    return 0
