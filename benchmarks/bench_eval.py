"""`make bench-eval`: `trainflow fid A B` beside `python -m pytorch_fid A B` on 2,000 vs 2,000 images, same weights.

The images are scikit-learn's digits: scans with an even index feed set A, odd ones set B (disjoint
sources), each scan drawn as 32x32 RGB PNGs with small seeded rotations and shifts until a set holds
--images files. No real InceptionV3 weights can be downloaded here, so both tools read one locally
built stand-in (pytorch-fid's FID InceptionV3 layout, seeded random convolutions, BatchNorm statistics
calibrated on digits: trainflow.metrics.feature_extractors.write_stand_in_inception_weights), placed
where pytorch-fid looks for it: $TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth.
pytorch-fid's CLI is run unchanged except that torch.hub reads that file with weights_only=True.

Each tool runs as its own subprocess with its default settings (batches of 50, 2048 dims, its
own loader workers), one after the other, --rounds times alternating; wall and CPU seconds (the
subprocess and its loader workers) are reported. On a shared machine wall time follows the load,
so compare rounds run side by side. --exact adds the exact FID of the same features (cross-Gram
SVD, no d x d square root) to show which tool is nearer. --smoke runs both tools on 20 vs 20 images with
64-d features and no loader workers, after calibrating the stand-in weights on 4 images (the test suite runs
it so that a refactor cannot break the bench; its numbers mean nothing). Last line:
    bench-eval: fid_rel_diff=X ours/pytorch_fid_time=Y.YY
with the wall-time ratio of the fastest round of each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainflow.demo.digits_dataset import digits_as_images
from trainflow.metrics.feature_extractors import write_stand_in_inception_weights
from trainflow.metrics.weights import FID_INCEPTION_FILE

# pytorch-fid's own entry point, with torch.hub's loader made to refuse pickled objects.
PYTORCH_FID_SAFE_LOAD = """
import functools, runpy, sys, torch.hub, torch.utils.model_zoo
safe = functools.partial(torch.hub.load_state_dict_from_url, weights_only=True)
torch.hub.load_state_dict_from_url = torch.utils.model_zoo.load_url = safe
sys.argv = ["pytorch_fid", *sys.argv[1:]]
runpy.run_module("pytorch_fid", run_name="__main__", alter_sys=True)
"""


def write_digit_sets(root: Path, per_set: int, seed: int = 0) -> tuple[Path, Path]:
    """Two folders of `per_set` PNGs each, from disjoint halves of the digits (even / odd scans)."""
    images, _ = digits_as_images()
    rng = np.random.default_rng(seed)
    folders = []
    for name, pool in (("a", images[0::2]), ("b", images[1::2])):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_set):
            scan = pool[index % len(pool)]
            if index >= len(pool):  # later rounds through the pool: a small random rotation and shift
                angle, dx, dy = rng.uniform(-12, 12), *rng.integers(-2, 3, size=2)
                scan = scan.rotate(angle, resample=Image.Resampling.BICUBIC, translate=(int(dx), int(dy)))
            scan.save(folder / f"{index:05d}.png")
        folders.append(folder)
    return folders[0], folders[1]


def write_weights(torch_home: Path, calibration: int = 16) -> Path:
    """The stand-in weights, BatchNorm statistics from the last `calibration` digits and their inverted copies."""
    images, _ = digits_as_images()
    digits = torch.from_numpy(np.stack([np.asarray(i) for i in images[-calibration:]])).permute(0, 3, 1, 2).float() / 255
    return write_stand_in_inception_weights(torch_home / "hub" / "checkpoints" / FID_INCEPTION_FILE, torch.cat([digits, 1 - digits]), seed=0)


def timed(command: list[str], env: dict[str, str]) -> dict:
    """Run a command; wall seconds, CPU seconds of it and its children, exit code and output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}


def run_ours(a: Path, b: Path, env: dict[str, str], work: Path, options: list[str]) -> dict:
    out = work / "ours.json"
    run = timed([sys.executable, "-m", "trainflow", "fid", str(a), str(b), "--json", str(out), *options], env)
    run["fid"] = json.loads(out.read_text())["fid"] if run["returncode"] == 0 else math.nan
    return run


def run_pytorch_fid(a: Path, b: Path, env: dict[str, str], options: list[str]) -> dict:
    run = timed([sys.executable, "-c", PYTORCH_FID_SAFE_LOAD, str(a), str(b), *options], env)
    match = re.search(r"^FID:\s+(\S+)\s*$", run["stdout"], flags=re.MULTILINE)
    run["fid"] = float(match.group(1)) if run["returncode"] == 0 and match else math.nan
    return run


def exact_fid(a: Path, b: Path, weights: Path) -> dict:
    """The FID of the same features without any d x d square root, as a referee for both tools.

    tr((Σ1^½ Σ2 Σ1^½)^½) is the nuclear norm of Ac Bcᵀ / √((n1 − 1)(n2 − 1)) for the centred
    feature matrices: one SVD of an n1 x n2 matrix, exact to float64 round-off.
    """
    from trainflow.metrics.feature_extractors import load_inception_extractor
    from trainflow.commands.fid import reuse_freed_memory
    from trainflow.metrics.image_features import list_image_files, stream_folder_statistics

    reuse_freed_memory()
    start = time.perf_counter()
    extractor = load_inception_extractor(str(weights), torch.device("cpu"), 2048)
    features = [stream_folder_statistics(list_image_files(folder), extractor, 100, 1, keep_features=True).features().numpy()
                for folder in (a, b)]
    centred = [f - f.mean(axis=0) for f in features]
    nuclear = np.linalg.svd(centred[0] @ centred[1].T, compute_uv=False).sum() / math.sqrt((len(features[0]) - 1) * (len(features[1]) - 1))
    diff = features[0].mean(axis=0) - features[1].mean(axis=0)
    traces = [(c**2).sum() / (len(c) - 1) for c in centred]
    return {"fid": float(diff @ diff + traces[0] + traces[1] - 2 * nuclear), "wall": time.perf_counter() - start}


def failure(run: dict) -> str:
    lines = (run["stderr"] or run["stdout"]).strip().splitlines()
    return lines[-1] if lines else f"exit code {run['returncode']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images per set (default: 2000)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of each tool (default: 1)")
    parser.add_argument("--exact", action="store_true", help="also compute the exact FID of the same features (cross-Gram SVD) as a referee")
    parser.add_argument("--smoke", action="store_true", help="20 images per set, one round: checks the bench runs")
    args = parser.parse_args()
    dims = 2048
    if args.smoke:
        args.images, args.rounds, args.exact, dims = 20, 1, False, 64
    if args.images < 2 or args.rounds < 1:
        parser.error("--images must be at least 2 (a covariance needs two) and --rounds at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        work = Path(tmp)
        a, b = write_digit_sets(work / "images", args.images)
        write_weights(work / "torch-home", calibration=2 if args.smoke else 16)
        env = {**os.environ, "TORCH_HOME": str(work / "torch-home"), "PYTHONUNBUFFERED": "1"}
        options = ["--dims", str(dims), "--num-workers", "0"] if args.smoke else []
        runs: dict[str, list[dict]] = {"trainflow fid": [], "python -m pytorch_fid": []}
        for _ in range(args.rounds):
            runs["trainflow fid"].append(run_ours(a, b, env, work, options))
            runs["python -m pytorch_fid"].append(run_pytorch_fid(a, b, env, options))
        exact = exact_fid(a, b, work / "torch-home" / "hub" / "checkpoints" / FID_INCEPTION_FILE) if args.exact else None

    print(f"FID of {args.images} vs {args.images} digit images, {dims}-d InceptionV3 (stand-in weights), "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"{'tool':<24}{'round':>6}{'wall s':>10}{'CPU s':>10}  FID")
    for tool, tool_runs in runs.items():
        for index, run in enumerate(tool_runs, start=1):
            value = repr(run["fid"]) if run["returncode"] == 0 else f"failed: {failure(run)}"
            print(f"{tool:<24}{index:>6}{run['wall']:>10.1f}{run['cpu']:>10.1f}  {value}")
    if exact is not None:
        print(f"{'exact (cross-Gram SVD)':<24}{'':>6}{exact['wall']:>10.1f}{'':>10}  {exact['fid']!r}")
        for tool, tool_runs in runs.items():
            print(f"  {tool}: relative difference from exact {abs(tool_runs[0]['fid'] - exact['fid']) / exact['fid']:.2e}")
    ours, theirs = runs["trainflow fid"], runs["python -m pytorch_fid"]
    reference = theirs[0]["fid"]
    rel_diff = abs(ours[0]["fid"] - reference) / abs(reference) if math.isfinite(reference) else math.nan
    ratio = min(r["wall"] for r in ours) / min(r["wall"] for r in theirs)
    print(f"bench-eval: fid_rel_diff={rel_diff:.2e} ours/pytorch_fid_time={ratio:.2f}")
    return 0 if all(r["returncode"] == 0 for r in ours) else 1


if __name__ == "__main__":
    raise SystemExit(main())
