"""The `trainflow` command's argument parser; each verb's code is a function in trainflow.commands."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Callable

from trainflow.errors import UserFacingError
from trainflow.redaction import redact_text


def _add_kfp_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", required=True, help="KFP address as the UI is served, e.g. http://localhost:8080 (port-forward) or https://kubeflow.example.com/pipeline")
    parser.add_argument("--namespace", default=None, help="your profile namespace on a multi-user Kubeflow (leave out on single-user KFP)")
    parser.add_argument("--token-env", default=None, metavar="NAME", help="environment variable holding a bearer token (default: KFP_TOKEN if set); the token itself is never a command-line value and never printed")


def _add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run YAML whose sections become the pipeline's parameter defaults")
    parser.add_argument("--experiment", default=None, help="KFP experiment, created if missing (default: the config's register.experiment)")
    parser.add_argument("--pipeline", choices=["text-to-image", "supervised"], default=None, help="pipeline to compile (default: the one the config's task implies)")
    parser.add_argument("--service-account", default=None, help="Kubernetes service account the run's pods use (default: the KFP pipeline runner's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainflow", description="Training and evaluation pipelines for PyTorch on Kubeflow.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="run the pipeline locally through kfp.local", description="Run the config's pipeline (text-to-image or supervised, from its task) on this machine through kfp.local, one subprocess per stage, and print a summary. Re-running the same config after a kill resumes training from the newest checkpoint in the state folder.")
    run.add_argument("--config", required=True, help="run YAML (see pipelines/configs/)")
    run.add_argument("--state-dir", default=".trainflow", help="where pipeline outputs, checkpoints and the MLflow SQLite store go (default: .trainflow)")
    run.add_argument("--fresh", action="store_true", help="delete this run's checkpoints first instead of resuming from them")
    run.add_argument("--summary-json", metavar="PATH", help="also write the summary (stages, metrics, best epoch, stop reason, registration) as JSON")
    run.add_argument("--verbose", action="store_true", help="show every stage's full log and kfp.local's executor records (default: one line per stage, and a failed stage's last lines)")
    run.set_defaults(handler="trainflow.commands.local_run:run_command")

    comp = verbs.add_parser("compile", help="write the pipeline YAML for a Kubeflow cluster", description="Compile the pipeline to KFP v2 YAML with a run config baked in as parameter defaults.")
    comp.add_argument("--config", required=True, help="run YAML whose sections become the parameter defaults")
    comp.add_argument("--pipeline", choices=["text-to-image", "supervised"], help="default: the one the config's task implies")
    comp.add_argument("--output", help="YAML file to write (default: build/<pipeline>.yaml, or build/katib_experiment.yaml)")
    comp.add_argument("--katib", action="store_true", help="write the config's tune section as a Katib Experiment instead "
                      "(each trial a Job running the train worker with the sampled values; objective on stdout as name=value)")
    comp.add_argument("--namespace", help="with --katib: the Experiment's namespace (default: kubectl's)")
    comp.set_defaults(handler="trainflow.commands.compile_pipeline:compile_command")

    worker = verbs.add_parser("train-worker", help="train from a request file (what each PyTorchJob/TrainJob process runs)", description="Run the training engine from a JSON train request (task, cache_dir, model_config, train_config, seed, checkpoint_dir, output_dir). Runs alone or under torchrun: `torchrun -m trainflow train-worker --request R` on every node; rank 0 writes checkpoints and the model folder.")
    worker.add_argument("--request", required=True, help="train request JSON on the shared workspace")
    worker.set_defaults(handler="trainflow.commands.train_worker:train_worker_command")

    val = verbs.add_parser("validate", help="check a run YAML against the schema", description="Validate a run YAML; errors name the field.")
    val.add_argument("--config", required=True, help="run YAML to check")
    val.add_argument("--no-path-check", action="store_true", help="do not require local paths to exist (cluster configs)")
    val.set_defaults(handler="trainflow.commands.validate_config:validate_command")

    check = verbs.add_parser("check-data", help="check every record of the config's data source, without training", description="Run ingest's record checks alone (nothing is written but --json): print kept/rejected counts and the top reasons. Exit 0 when the rejected share is within ingest.max_bad_fraction, 1 when above it, 2 on a usage or config error.")
    check.add_argument("--config", required=True, help="run YAML whose ingest section names the data")
    check.add_argument("--json", metavar="PATH", help='also write {"kept": [ids], "rejected": [{"ref", "source", "reason"}]} to PATH')
    check.set_defaults(handler="trainflow.commands.check_data:check_data_command")

    demo = verbs.add_parser("demo-assets", help="build the demo's dataset, base model and classifier (offline, cached)", description="Build the digits dataset, the tiny SD base model and the digits classifier; reused when already built.")
    demo.add_argument("--root", default=".trainflow/demo", help="where to write them (default: .trainflow/demo)")
    demo.add_argument("--force", action="store_true", help="rebuild even if present")
    demo.add_argument("--mixed-aspect", action="store_true",
                      help="also write digits-mixed: the digits on square, landscape and portrait canvases, for "
                           "pipelines/configs/digits-buckets.yaml (aspect-ratio buckets)")
    demo.set_defaults(handler="trainflow.commands.demo_assets:demo_assets_command")

    weights = verbs.add_parser("weights", help="list or fetch every weight file a config needs (for air-gapped clusters)", description="check: list each weight file the config's base model and metrics need, present or missing, with the path it is expected at (HF_HOME / TORCH_HOME layout); exit 0 when every required one is present, 1 when not. fetch: download them, where a hub is reachable, into a folder laid out as HF_HOME and TORCH_HOME, to copy into the cluster's weights cache.")
    weights_verbs = weights.add_subparsers(dest="weights_verb", required=True)
    weights_check = weights_verbs.add_parser("check", help="list needed weights: present, missing, expected path", description="List every weight file the config needs with present/missing and its expected path; exit 1 when a required one is missing.")
    weights_check.add_argument("--config", required=True, help="run YAML")
    weights_check.set_defaults(handler="trainflow.commands.weights:weights_check_command")
    weights_fetch = weights_verbs.add_parser("fetch", help="download needed weights into DIR (HF_HOME + TORCH_HOME layout)", description="Download every hub model and torch.hub file the config needs into DIR: hub models as DIR/hub/models--org--name (HF_HOME), torch files as DIR/hub/checkpoints/<file> (TORCH_HOME). Exit 1 when any download failed, one line per file.")
    weights_fetch.add_argument("--config", required=True, help="run YAML")
    weights_fetch.add_argument("--to", required=True, metavar="DIR", help="folder to fill; copy it into the weights-cache volume")
    weights_fetch.set_defaults(handler="trainflow.commands.weights:weights_fetch_command")

    fid = verbs.add_parser("fid", help="FID (and KID) between two image folders or .npz statistics; a drop-in for python -m pytorch_fid", description="Compute the FID between two image folders (images directly inside, as pytorch-fid reads them) or pytorch-fid .npz statistics files, with pytorch-fid's InceptionV3 and a Frechet distance that stays finite for singular covariances. Prints 'FID:  <value>' like pytorch-fid. Weights: $TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth or --weights.")
    fid.add_argument("path", nargs="+", metavar="DIR_OR_NPZ", help="two inputs to compare; one is enough with --save-stats")
    fid.add_argument("--dims", type=int, default=2048, choices=[64, 192, 768, 2048], help="InceptionV3 feature width (default: 2048, the pool3 features)")
    fid.add_argument("--batch-size", type=int, default=50, help="images per forward pass (default: 50, as pytorch-fid)")
    fid.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    fid.add_argument("--num-workers", type=int, help="image-decoding processes (default: one per spare core, 1 to 4)")
    fid.add_argument("--json", metavar="PATH", help="also write the values and inputs as JSON")
    fid.add_argument("--kid", action="store_true", help="also compute KID (mean and std over 100 subsets); needs image folders on both sides")
    fid.add_argument("--weights", metavar="FILE", help="FID InceptionV3 weights file (default: the TORCH_HOME file above)")
    fid.add_argument("--save-stats", metavar="PATH", help="write the first input's statistics to PATH (.npz, pytorch-fid's format)")
    fid.add_argument("--cache", metavar="DIR", help="keep each folder's statistics (features with --kid) in DIR, keyed by the weights' digest and the folder's content; an unchanged folder is then read from there")
    fid.set_defaults(handler="trainflow.commands.fid:fid_command")

    prune = verbs.add_parser("prune-runs", help="remove old run folders (checkpoints, caches, TensorBoard) from the workspace", description="Remove run folders under the workspace's runs folder (<workspace>/runs/<KFP run id>/), keeping the newest --keep-last runs and every run written to in the last --keep-days days. A run's age is the newest change inside it, so a running one is kept. Registered models are in MLflow, not here. Folders that are not trainflow runs are left alone.")
    prune.add_argument("runs_dir", metavar="RUNS_DIR", help="the workspace's runs folder, e.g. /workspace/runs")
    prune.add_argument("--keep-last", type=int, default=10, help="always keep this many newest runs (default: 10)")
    prune.add_argument("--keep-days", type=float, default=14, help="keep every run written to in this many days (default: 14)")
    prune.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    prune.add_argument("--verbose", action="store_true", help="also list the kept and the ignored folders")
    prune.set_defaults(handler="trainflow.commands.prune_runs:prune_runs_command")

    submit = verbs.add_parser("submit", help="upload the pipeline to Kubeflow and start a run", description="Compile the pipeline with the config baked in, upload it as a pipeline version named by its content hash (an unchanged package reuses its version), and start a run; prints the run's URL.")
    _add_kfp_arguments(submit)
    _add_pipeline_arguments(submit)
    submit.add_argument("--run-name", default=None, help="run name (default: <run_name>-<UTC time>)")
    submit.set_defaults(handler="trainflow.commands.kfp_server:submit_command")

    schedule = verbs.add_parser("schedule", help="create a recurring run on Kubeflow (cron)", description="Create a recurring run of the pipeline: at most one run at a time, no catch-up of missed times, enabled. Ingest caching is off in the pipeline, so every scheduled run reads the dataset folder anew; with the stable hash split, records already seen keep their split as new data arrives.")
    _add_kfp_arguments(schedule)
    _add_pipeline_arguments(schedule)
    schedule.add_argument("--cron", required=True, help="KFP cron expression with 6 fields, seconds first: '0 0 3 * * *' is 03:00 every day")
    schedule.add_argument("--name", default=None, help="recurring run name (default: <run_name>-schedule); an existing one with this name is left alone")
    schedule.add_argument("--replace", action="store_true", help="replace existing recurring runs with this name (the new one is created first)")
    schedule.set_defaults(handler="trainflow.commands.kfp_server:schedule_command")

    runs = verbs.add_parser("runs", help="list recent runs on Kubeflow with their status", description="List the most recent runs, newest first: status, created time (UTC), name and run id.")
    _add_kfp_arguments(runs)
    runs.add_argument("--experiment", default=None, help="only runs of this experiment")
    runs.add_argument("--limit", type=int, default=20, help="how many runs (1-200, default 20)")
    runs.set_defaults(handler="trainflow.commands.kfp_server:runs_command")

    compare = verbs.add_parser("compare", help="compare two supervised models on the config's test split (paired bootstrap)", description="Run models A and B on the same test records of the config's split and print, per metric, the difference A − B with its paired-bootstrap interval and P(A better). The test split comes from --cache (a build_cache output, e.g. the pipeline run's) or, without it, is rebuilt by running the config's ingest and cache stages into a temporary folder (seeded: the same data and config give the same test records).")
    compare.add_argument("--config", required=True, help="run YAML (classification, regression or segmentation)")
    compare.add_argument("--a", required=True, metavar="MODEL", help="model folder, models:/<name>@<alias> or models:/<name>/<version> (from register.tracking_uri)")
    compare.add_argument("--b", required=True, metavar="MODEL", help="the model to compare with, in the same forms")
    compare.add_argument("--cache", metavar="DIR", help="a build_cache output to take the test split from (default: rebuild it from the config)")
    compare.add_argument("--metric", action="append", help="metric to compare (repeatable; default: the task's first headline metric: accuracy, r2 or mean_iou)")
    compare.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default: evaluate.bootstrap_resamples, else 1000)")
    compare.add_argument("--confidence", type=float, default=0.95, help="interval confidence (default: 0.95)")
    compare.add_argument("--device", default="auto", help="where to run the models (default: auto)")
    compare.add_argument("--json", metavar="PATH", help="also write the full comparison as JSON")
    compare.set_defaults(handler="trainflow.commands.compare:compare_command")

    from trainflow.commands.cross_validate import add_cross_validate_parser
    from trainflow.commands.lineage import add_lineage_parser
    from trainflow.commands.model_aliases import add_alias_parsers
    from trainflow.commands.tune import add_tune_parser

    add_tune_parser(verbs)
    add_cross_validate_parser(verbs)
    add_alias_parsers(verbs)
    add_lineage_parser(verbs)
    return parser


def command_handler(handler: Any) -> Callable[[argparse.Namespace], int]:
    """The verb's function: a callable, or "module:function" imported only when that verb runs (fast --help)."""
    if callable(handler):
        return handler
    module, function = handler.split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return command_handler(args.handler)(args)
    except UserFacingError as exc:
        print(f"trainflow: error: {redact_text(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
