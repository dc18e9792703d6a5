"""`trainflow demo-assets`: build the demo's dataset, base model and classifier once (offline)."""

from __future__ import annotations

import argparse


def demo_assets_command(args: argparse.Namespace) -> int:
    from trainflow.demo.assets import prepare_demo_assets

    prepare_demo_assets(args.root, force=args.force)
    if args.mixed_aspect:
        from trainflow.demo.assets import prepare_mixed_aspect_digits

        prepare_mixed_aspect_digits(args.root)
    return 0
