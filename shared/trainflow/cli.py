"""The `trainflow` command: run, compile, validate, demo-assets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainflow.errors import UserFacingError


def _run(args: argparse.Namespace) -> int:
    from trainflow.config import load_config
    from trainflow.local_run import print_summary, run_locally

    config = load_config(args.config)
    print(f"trainflow: running '{config.run_name}' locally (state in {Path(args.state_dir).resolve()})", flush=True)
    try:
        result = run_locally(config, args.state_dir)
    except RuntimeError as exc:  # kfp.local reports a failed task this way; its log is printed above
        raise UserFacingError(f"{exc} See that stage's log above for its error.") from None
    print_summary(result)
    return 0


def _compile(args: argparse.Namespace) -> int:
    from kfp import compiler

    from pipelines.text_to_image import pipeline_arguments, text_to_image_pipeline
    from trainflow.config import load_config

    config = load_config(args.config, check_local_paths=False)  # paths are the pods' paths
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(text_to_image_pipeline, str(output), pipeline_parameters=pipeline_arguments(config))
    print(f"trainflow: wrote {output} (defaults from {args.config}); upload it in the Kubeflow UI or submit with kfp.Client")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from trainflow.config import load_config

    config = load_config(args.config, check_local_paths=not args.no_path_check)
    print(f"trainflow: {args.config} is valid (run '{config.run_name}')")
    return 0


def _demo_assets(args: argparse.Namespace) -> int:
    from trainflow.demo.assets import prepare_demo_assets

    prepare_demo_assets(args.root, force=args.force)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainflow", description="Training and evaluation pipelines for PyTorch on Kubeflow.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="run the pipeline locally through kfp.local", description="Run the text-to-image pipeline on this machine (kfp.local, one subprocess per stage) and print a summary.")
    run.add_argument("--config", required=True, help="run YAML (see pipelines/configs/)")
    run.add_argument("--state-dir", default=".trainflow", help="where pipeline outputs, checkpoints and the MLflow SQLite store go (default: .trainflow)")
    run.set_defaults(handler=_run)

    comp = verbs.add_parser("compile", help="write the pipeline YAML for a Kubeflow cluster", description="Compile the pipeline to KFP v2 YAML with a run config baked in as parameter defaults.")
    comp.add_argument("--config", required=True, help="run YAML whose sections become the parameter defaults")
    comp.add_argument("--output", default="build/text_to_image.yaml", help="YAML file to write (default: build/text_to_image.yaml)")
    comp.set_defaults(handler=_compile)

    val = verbs.add_parser("validate", help="check a run YAML against the schema", description="Validate a run YAML; errors name the field.")
    val.add_argument("--config", required=True, help="run YAML to check")
    val.add_argument("--no-path-check", action="store_true", help="do not require local paths to exist (cluster configs)")
    val.set_defaults(handler=_validate)

    demo = verbs.add_parser("demo-assets", help="build the demo's dataset, base model and classifier (offline, cached)", description="Build the digits dataset, the tiny SD base model and the digits classifier; reused when already built.")
    demo.add_argument("--root", default=".trainflow/demo", help="where to write them (default: .trainflow/demo)")
    demo.add_argument("--force", action="store_true", help="rebuild even if present")
    demo.set_defaults(handler=_demo_assets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserFacingError as exc:
        print(f"trainflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
