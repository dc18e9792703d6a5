"""`trainflow demo-assets`: build the demo's dataset, base model and classifier once (offline)."""

from __future__ import annotations

import argparse


def demo_assets_command(args: argparse.Namespace) -> int:
    from trainflow.demo.assets import prepare_demo_assets

    prepare_demo_assets(args.root, force=args.force)
    return 0
