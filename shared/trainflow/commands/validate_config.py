"""`trainflow validate --config C`: check a run YAML against the schema; errors name the field."""

from __future__ import annotations

import argparse


def validate_command(args: argparse.Namespace) -> int:
    from trainflow.config import load_config

    config = load_config(args.config, check_local_paths=not args.no_path_check)
    print(f"trainflow: {args.config} is valid (run '{config.run_name}')")
    return 0
