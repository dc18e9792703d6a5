"""`trainflow compile`: the pipeline YAML for a Kubeflow cluster, with a run config baked in as parameter defaults."""

from __future__ import annotations

import argparse
from pathlib import Path


def compile_command(args: argparse.Namespace) -> int:
    from trainflow.config import load_config
    from trainflow.kubeflow.pipeline_package import compile_pipeline_package, default_pipeline

    config = load_config(args.config, check_local_paths=False)  # paths are the pods' paths
    pipeline = args.pipeline or default_pipeline(config)
    output = compile_pipeline_package(config, pipeline, Path(args.output or f"build/{pipeline.replace('-', '_')}.yaml"))
    print(f"trainflow: wrote {output} ({pipeline} pipeline, defaults from {args.config}); upload it in the Kubeflow UI, "
          "or use `trainflow submit`")
    return 0
