"""Per-record test outputs: computed once by the evaluate stage, read by every later comparison.

    <folder>/predictions.safetensors
        <truth>            the test split's labels (N,) / targets (N, T) / masks (N, H, W); absent for text_to_image
        <source>.<output>  each scored model's outputs, source = best | last | base:
                           probabilities (N, C) float64, predictions (N, T) float64,
                           predicted (N, H, W) class maps, or test_loss (N,) per-record denoising loss
    <folder>/predictions.json
        task, names (classes or targets), sources, record_ids (test split order), dataset_sha256, seed,
        dtypes (each tensor's type before it was stored in the smallest that holds it)

Records are in the cache's test-split order; `record_ids` lets a comparison check
that another model was scored on exactly the same records.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import torch
from safetensors.torch import load_file, save_file

from trainflow.atomic_files import atomic_directory
from trainflow.data.cache.attrs import cache_path, read_cache_dataset_hash
from trainflow.errors import UserFacingError

OUTPUTS_FILE = "predictions.safetensors"
INFO_FILE = "predictions.json"


@dataclasses.dataclass
class RecordOutputs:
    """One test split scored by one or more models (`outputs` by source), with its ground truth."""

    task: str
    names: list[str]
    truth: torch.Tensor | None
    outputs: dict[str, torch.Tensor]
    record_ids: list[str]
    dataset_sha256: str
    seed: int = 0

    def argument_names(self) -> tuple[str, str | None]:
        """The task's metric-function argument names for (model outputs, ground truth)."""
        from trainflow.tasks import get_task

        return get_task(self.task).output_names

    def arrays(self, source: str) -> dict[str, torch.Tensor]:
        """The inputs of the task's metric function for model `source`."""
        if source not in self.outputs:
            raise UserFacingError(f"the per-record outputs hold {', '.join(self.outputs)}, not {source!r}")
        output_name, truth_name = self.argument_names()
        arrays = {output_name: self.outputs[source]}
        if truth_name is not None:
            arrays[truth_name] = self.truth
        return arrays

    def arrays_of(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The metric inputs for another model's outputs on the same records (same truth)."""
        output_name, truth_name = self.argument_names()
        return {output_name: outputs, **({truth_name: self.truth} if truth_name is not None else {})}


def test_record_ids(cache_dir: str | Path) -> list[str]:
    """The cache's test-split record ids, in the order every loader reads them."""
    with h5py.File(cache_path(cache_dir), "r") as handle:
        if "test" not in handle:
            raise UserFacingError(f"{cache_path(cache_dir)} has no 'test' split; rebuild the cache from an ingest output")
        return [r.decode() if isinstance(r, bytes) else str(r) for r in handle["test"]["record_ids"][()]]


def save_record_outputs(folder: str | Path, outputs: RecordOutputs) -> None:
    """Write `folder` (replaced atomically) with predictions.safetensors and predictions.json."""
    output_name, truth_name = outputs.argument_names()
    full = {f"{source}.{output_name}": t for source, t in outputs.outputs.items()}
    if truth_name is not None:
        full[truth_name] = outputs.truth
    tensors = {name: _compact(t) for name, t in full.items()}
    info = {"task": outputs.task, "names": outputs.names, "sources": list(outputs.outputs), "seed": outputs.seed,
            "record_ids": outputs.record_ids, "dataset_sha256": outputs.dataset_sha256, "split": "test",
            "dtypes": {name: str(t.dtype).removeprefix("torch.") for name, t in full.items()}}
    with atomic_directory(folder) as staging:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / OUTPUTS_FILE))
        (staging / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def load_record_outputs(folder: str | Path) -> RecordOutputs:
    """Read what `save_record_outputs` wrote; class maps and labels come back as int64.

    Raises UserFacingError naming the file when the folder is not an evaluate stage's predictions output.
    """
    root = Path(folder)
    for name in (OUTPUTS_FILE, INFO_FILE):
        if not (root / name).is_file():
            raise UserFacingError(f"{root / name} is missing; the predictions input must be the evaluate stage's "
                                  "predictions output")
    info = json.loads((root / INFO_FILE).read_text(encoding="utf-8"))
    tensors = load_file(str(root / OUTPUTS_FILE))
    dtypes = info.get("dtypes", {})

    def restored(name: str) -> torch.Tensor:
        if name not in tensors:
            raise UserFacingError(f"{root / OUTPUTS_FILE} has no tensor {name!r}; the predictions input must be the "
                                  "evaluate stage's predictions output")
        if name not in dtypes:
            return tensors[name]
        dtype = getattr(torch, str(dtypes[name]), None)
        if not isinstance(dtype, torch.dtype):
            raise UserFacingError(f"{root / INFO_FILE}: {str(dtypes[name])[:40]!r} (the type of {name}) is not a torch "
                                  "dtype; re-run the evaluate stage")
        return tensors[name].to(dtype)

    loaded = RecordOutputs(task=info["task"], names=info["names"], truth=None, outputs={}, record_ids=info["record_ids"],
                           dataset_sha256=info["dataset_sha256"], seed=info.get("seed", 0))
    output_name, truth_name = loaded.argument_names()
    loaded.truth = restored(truth_name) if truth_name else None
    loaded.outputs = {source: restored(f"{source}.{output_name}") for source in info["sources"]}
    return loaded


def check_same_records(outputs: RecordOutputs, cache_dir: str | Path) -> None:
    """Raise UserFacingError unless `cache_dir`'s test split is the one `outputs` were computed on."""
    ids = test_record_ids(cache_dir)
    if ids != outputs.record_ids:
        raise UserFacingError(
            f"the cache {cache_dir} has a different test split ({len(ids)} records, dataset sha256 "
            f"{read_cache_dataset_hash(cache_dir)[:12]}…) from the one the predictions were computed on "
            f"({len(outputs.record_ids)} records, {outputs.dataset_sha256[:12]}…); pass the cache the candidate was evaluated on"
        )


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """Class indices in the smallest integer type that holds them (a segmentation test split is N·H·W values)."""
    if tensor.dtype == torch.int64 and tensor.numel() and tensor.min() >= 0 and tensor.max() < 256:
        return tensor.to(torch.uint8)
    return tensor.cpu()
