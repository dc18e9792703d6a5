"""`trainflow submit`, `schedule` and `runs`: the pipeline on a Kubeflow Pipelines server."""

from __future__ import annotations

import argparse


def kfp_target(args: argparse.Namespace):
    from trainflow.kubeflow.kfp_connection import KfpTarget

    return KfpTarget(host=args.host, namespace=args.namespace, token_env=args.token_env)


def submit_command(args: argparse.Namespace) -> int:
    from trainflow.kubeflow.kfp_runs import submit_pipeline_run

    started = submit_pipeline_run(
        kfp_target(args), args.config, pipeline=args.pipeline, experiment=args.experiment,
        run_name=args.run_name, service_account=args.service_account,
    )
    uploaded = "new version" if started.version.newly_uploaded else "existing version"
    print(f"trainflow: started run '{started.run_name}' of {started.version.version_name} ({uploaded}): {started.url}")
    return 0


def schedule_command(args: argparse.Namespace) -> int:
    from trainflow.kubeflow.kfp_runs import schedule_pipeline

    target = kfp_target(args)
    outcome = schedule_pipeline(
        target, args.config, args.cron, name=args.name, experiment=args.experiment, pipeline=args.pipeline,
        replace=args.replace, service_account=args.service_account,
    )
    url = target.recurring_run_url(outcome.recurring_run_id)
    if not outcome.created:
        print(f"trainflow: recurring run '{outcome.name}' already exists, left unchanged (pass --replace to replace it): {url}")
    else:
        replaced = f", replacing {len(outcome.replaced_ids)} older one(s)" if outcome.replaced_ids else ""
        print(f"trainflow: scheduled '{outcome.name}' of {outcome.version.version_name}{replaced}: {url}")
    return 0


def runs_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from trainflow.kubeflow.kfp_runs import recent_runs, runs_table

    rows = recent_runs(kfp_target(args), experiment=args.experiment, limit=args.limit)
    if not rows:
        print("trainflow: no runs found")
        return 0
    console = Console()
    if not console.is_terminal:
        console.width = 200  # piped output: one line per run rather than folded at 80 columns
    console.print(runs_table(rows))
    return 0
