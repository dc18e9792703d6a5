"""make bench-data: the naive loader a user would write, trainflow's cache loader, a raw read of the cache file,
and streaming memory at 1× and 10× the data, on this machine.

Data: scikit-learn's 1,797 digits (real scans), upscaled to 64×64 RGB PNGs, written
as an ingest_split Dataset artifact; the supervised cache is built from it by
trainflow's own cache builder. The 10× set lists every digit ten times (the cache
then holds ten times the decoded bytes; its folder holds each PNG once, since a manifest
may only name images inside its dataset folder).

    naive     a torch Dataset that opens each PNG with PIL, converts and resizes it to 64×64
              per item, then a DataLoader with batch_size 64 and default collate
    cache     trainflow's training path: SupervisedCache (loading mode auto = eager here) served
              through the engine's EpochPlan loader (batch read via __getitems__), one epoch
    raw       h5py reading each shard's columns whole, in order (the floor of reading the file)
    streaming peak RSS of a fresh process while it streams one epoch of the cache (open_stream),
              1× vs 10×, sampled after every batch; eager mode beside it for contrast

Throughputs are the median of several passes, one thread, no workers (the machine
is shared; this measures per-core cost). --smoke runs the same steps on 256 digits, 2× instead
of 10×, one pass (seconds; the test suite runs it so that a refactor cannot break the bench). Last line:
    bench-data: cache/naive=X.X cache/raw=Y.YY streaming_rss_10x/1x=Z.ZZ
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset

from trainflow.config import CacheConfig
from trainflow.data.cache.supervised_cache import SupervisedCache, build_supervised_cache, read_cache_index
from trainflow.training.batch_plan import EpochPlan
from trainflow.training.distributed import ProcessInfo

SIZE = 64
BATCH = 64


def write_artifact(folder: Path, repeats: int, records: int | None = None) -> Path:
    """A Dataset artifact of the first `records` digits (all by default) × repeats, all in train (one record each
    in val and test)."""
    digits = load_digits()
    count = min(records or len(digits.images), len(digits.images))
    pngs = folder / "images"
    pngs.mkdir(parents=True, exist_ok=True)
    rows = []
    for number in range(count * repeats):
        source = number % count
        png = pngs / f"{source}.png"
        if not png.is_file():
            pixels = (digits.images[source] / 16 * 255).astype(np.uint8)
            Image.fromarray(pixels).resize((SIZE, SIZE), Image.BILINEAR).convert("RGB").save(png)
        split = "val" if number == 0 else "test" if number == 1 else "train"
        rows.append({"id": f"digit-{number:06d}", "split": split, "sha256": hashlib.sha256(f"{number}".encode()).hexdigest(),
                     "image": png.relative_to(folder).as_posix(), "label": int(digits.target[source])})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps({"task": "classification", "kind": "image", "resolution": SIZE,
                                                     "class_names": [str(d) for d in range(10)]}), encoding="utf-8")
    return folder


class NaivePngDataset(Dataset):
    """What a user writes first: open, convert and resize each image in __getitem__."""

    def __init__(self, folder: Path) -> None:
        rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
        self.rows = [(folder / row["image"], row["label"]) for row in rows if row["split"] == "train"]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path, label = self.rows[index]
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32) / 255.0
        return {"index": torch.tensor(index), "inputs": torch.from_numpy(pixels).permute(2, 0, 1), "label": torch.tensor(label)}


def records_per_second(run_pass, passes: int) -> float:
    rates = []
    for _ in range(passes):
        started = time.perf_counter()
        count = run_pass()
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


def naive_pass(dataset: Dataset) -> int:
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    return sum(len(batch["inputs"]) for batch in loader)


def cache_pass(plan: EpochPlan, epoch: list[int]) -> int:
    epoch[0] += 1
    return sum(len(batch["inputs"]) for batch in plan.loader(epoch[0], 0, BATCH, 0, pin_memory=False))


def raw_pass(cache_dir: Path) -> int:
    table = read_cache_index(cache_dir).table("train")
    for path in table.paths:
        with h5py.File(path, "r") as handle:
            for name in handle:
                handle[name][()]
    return len(table)


STREAM_PROBE = """
import sys
import psutil
from torch.utils.data import DataLoader
from trainflow.data.cache.supervised_cache import SupervisedCache, open_stream
from trainflow.training.batch_plan import EpochPlan
from trainflow.training.distributed import ProcessInfo
process = psutil.Process()
cache_dir, mode = sys.argv[1], sys.argv[2]
after_imports = peak = process.memory_info().rss
if mode == "streaming":
    batches = DataLoader(open_stream(cache_dir, "train", batch_size=64, shuffle=True), batch_size=None)
else:
    batches = EpochPlan(SupervisedCache(cache_dir, "train"), ProcessInfo(), 0, 64).loader(0, 0, 64, 0, False)
count = 0
for batch in batches:
    count += len(batch["inputs"])
    peak = max(peak, process.memory_info().rss)
print(count, after_imports, peak)
"""


def peak_rss_mb(cache_dir: Path, mode: str) -> tuple[float, float, int]:
    """(peak RSS while reading one epoch, RSS after imports) in MiB of a fresh process; and records read.

    Sampled after every batch, so the peak is the reading's, not the imports' (torch alone is ~0.5 GB)."""
    out = subprocess.run([sys.executable, "-c", STREAM_PROBE, str(cache_dir), mode], capture_output=True, text=True,
                         check=True).stdout.split()
    count, after_imports, peak = (int(value) for value in out[-3:])
    return peak / 2**20, after_imports / 2**20, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=3, help="passes per throughput (median reported)")
    parser.add_argument("--work-dir", help="keep the data here (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="256 digits, 2x instead of 10x, one pass: checks the "
                                                             "bench runs, measures nothing worth quoting")
    args = parser.parse_args()
    if args.passes < 1:
        parser.error("--passes must be at least 1")
    records, scale = (256, 2) if args.smoke else (None, 10)
    passes = 1 if args.smoke else args.passes
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as temporary:
        root = Path(args.work_dir or temporary)
        started = time.perf_counter()
        one = write_artifact(root / "dataset-1x", 1, records)
        ten = write_artifact(root / "dataset-10x", scale, records)
        settings = CacheConfig(shard_records=2048)
        cache_1x = Path(build_supervised_cache(one, root / "cache-1x", settings)["cache_location"])
        built = time.perf_counter()
        cache_10x = Path(build_supervised_cache(ten, root / "cache-10x", settings)["cache_location"])
        print(f"data: {len(NaivePngDataset(one))} train records of {SIZE}x{SIZE}; cache 1x built in {built - started:.1f} s, "
              f"{scale}x in {time.perf_counter() - built:.1f} s", flush=True)

        naive = records_per_second(lambda: naive_pass(NaivePngDataset(one)), passes)
        opened = time.perf_counter()
        plan = EpochPlan(SupervisedCache(cache_1x, "train"), ProcessInfo(), 0, BATCH)
        open_seconds = time.perf_counter() - opened
        epoch = [0]
        cache = records_per_second(lambda: cache_pass(plan, epoch), passes * 3)
        raw = records_per_second(lambda: raw_pass(cache_1x), passes * 3)
        rss = {(mode, size): peak_rss_mb(folder, mode) for mode in ("streaming", "eager")
               for size, folder in (("1x", cache_1x), (f"{scale}x", cache_10x))}

    print(f"\n| loader ({len(plan.dataset)} records, {SIZE}x{SIZE} RGB, batch {BATCH}, 1 thread) | records/s |")
    print("|---|---|")
    print(f"| naive: PIL open + convert + resize per item | {naive:,.0f} |")
    print(f"| trainflow cache loader (eager, one epoch; opening the cache took {open_seconds:.2f} s) | {cache:,.0f} |")
    print(f"| raw sequential h5py read of the cache file | {raw:,.0f} |")
    print("\n| mode | data | records | peak RSS MiB | growth over the RSS after imports, MiB |")
    print("|---|---|---|---|---|")
    for (mode, size), (peak, baseline, count) in rss.items():
        print(f"| {mode} | {size} | {count:,} | {peak:.0f} | {peak - baseline:.0f} |")
    ratio_rss = rss[("streaming", f"{scale}x")][0] / rss[("streaming", "1x")][0]
    print(f"\nbench-data: cache/naive={cache / naive:.1f} cache/raw={cache / raw:.2f} streaming_rss_{scale}x/1x={ratio_rss:.2f}")


if __name__ == "__main__":
    main()
