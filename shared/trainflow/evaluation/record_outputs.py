"""Per-record test outputs: computed once by the evaluate stage, read by every later comparison.

    <folder>/predictions.safetensors
        <truth>            the test split's labels (N,) / targets (N, T) / masks (N, H, W); absent for text_to_image
        <source>.<output>  each scored model's outputs, source = best | last | base:
                           probabilities (N, C) float64, predictions (N, T) float64,
                           predicted (N, H, W) class maps, or test_loss (N,) per-record denoising loss
    <folder>/predictions.json
        task, names (classes or targets), sources, record_ids (test split order), dataset_sha256, seed

Records are in the cache's test-split order; `record_ids` lets a comparison check
that another model was scored on exactly the same records.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Callable

import h5py
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from trainflow.atomic_files import atomic_directory
from trainflow.data.cache.attrs import cache_path, read_cache_dataset_hash
from trainflow.errors import UserFacingError

OUTPUTS_FILE = "predictions.safetensors"
INFO_FILE = "predictions.json"
SUPERVISED_TASKS = ("classification", "regression", "segmentation")
# The metrics a report leads with, given intervals and best-vs-last comparisons.
HEADLINE_METRICS = {"classification": ["accuracy", "f1_macro"], "regression": ["r2", "rmse", "mae"],
                    "segmentation": ["mean_iou", "mean_dice", "pixel_accuracy"], "text_to_image": ["test_loss"]}
# metric-function argument names: (model output, ground truth)
ARGUMENTS = {"classification": ("probabilities", "labels"), "regression": ("predictions", "targets"),
             "segmentation": ("predicted", "masks"), "text_to_image": ("test_loss", None)}


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

    def arrays(self, source: str) -> dict[str, torch.Tensor]:
        """The inputs of `metric_function(task, names)` for model `source`."""
        if source not in self.outputs:
            raise UserFacingError(f"the per-record outputs hold {', '.join(self.outputs)}, not {source!r}")
        output_name, truth_name = ARGUMENTS[self.task]
        arrays = {output_name: self.outputs[source]}
        if truth_name is not None:
            arrays[truth_name] = self.truth
        return arrays


def mean_test_loss(test_loss: torch.Tensor) -> dict[str, Any]:
    """text_to_image's metric over records: the mean per-record denoising loss (what the test_loss scalar is)."""
    return {"test_loss": float(test_loss.double().mean())}


def metric_function(task: str, names: list[str]) -> Callable[..., dict[str, Any]]:
    """The task's metric function bound to its class/target names (what bootstrap and comparison call)."""
    from trainflow.metrics import supervised as sm

    if task == "classification":
        return functools.partial(sm.classification_metrics, class_names=names)
    if task == "regression":
        return functools.partial(sm.regression_metrics, target_names=names)
    if task == "segmentation":
        return functools.partial(sm.segmentation_metrics, class_names=names)
    return mean_test_loss


def test_record_ids(cache_dir: str | Path) -> list[str]:
    """The cache's test-split record ids, in the order every loader reads them."""
    with h5py.File(cache_path(cache_dir), "r") as handle:
        if "test" not in handle:
            raise UserFacingError(f"{cache_path(cache_dir)} has no 'test' split; rebuild the cache from an ingest output")
        return [r.decode() if isinstance(r, bytes) else str(r) for r in handle["test"]["record_ids"][()]]


@torch.no_grad()
def supervised_test_outputs(model: torch.nn.Module, meta: dict[str, Any], cache_dir: str | Path, batch_size: int,
                            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(model outputs, truth) on the cache's test split, in record order.

    Outputs: class probabilities (N, C) float64, predictions in the targets' units
    (N, T) float64, or predicted class maps (N, H, W) int64, by meta["task"].
    Raises UserFacingError when the test split is empty or the cache is not supervised.
    """
    from trainflow.data.cache.supervised_cache import SupervisedCache
    from trainflow.tasks.supervised import model_outputs

    task = meta["task"]
    test_set = SupervisedCache(cache_dir, "test")
    if len(test_set) == 0:
        raise UserFacingError("the test split is empty; ingest more records or change ingest.split")
    model = model.to(device).eval()
    truth_key = {"classification": "label", "regression": "targets", "segmentation": "mask"}[task]
    outputs, truths = [], []
    for batch in DataLoader(test_set, batch_size=batch_size, shuffle=False):
        produced = model_outputs(model, meta, batch["inputs"].to(device)).cpu()
        outputs.append(produced.argmax(1) if task == "segmentation" else produced.double())
        truths.append(batch[truth_key])
    truth = torch.cat(truths)
    return torch.cat(outputs), truth.double() if task == "regression" else truth


def save_record_outputs(folder: str | Path, outputs: RecordOutputs) -> None:
    """Write `folder` (replaced atomically) with predictions.safetensors and predictions.json."""
    output_name, truth_name = ARGUMENTS[outputs.task]
    tensors = {f"{source}.{output_name}": _compact(t) for source, t in outputs.outputs.items()}
    if truth_name is not None:
        tensors[truth_name] = _compact(outputs.truth)
    info = {"task": outputs.task, "names": outputs.names, "sources": list(outputs.outputs), "seed": outputs.seed,
            "record_ids": outputs.record_ids, "dataset_sha256": outputs.dataset_sha256, "split": "test"}
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
    output_name, truth_name = ARGUMENTS[info["task"]]
    restore = _restored_dtype(info["task"])
    return RecordOutputs(
        task=info["task"], names=info["names"],
        truth=restore(tensors[truth_name], truth=True) if truth_name else None,
        outputs={source: restore(tensors[f"{source}.{output_name}"], truth=False) for source in info["sources"]},
        record_ids=info["record_ids"], dataset_sha256=info["dataset_sha256"], seed=info.get("seed", 0),
    )


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


def _restored_dtype(task: str) -> Callable[..., torch.Tensor]:
    def restore(tensor: torch.Tensor, truth: bool) -> torch.Tensor:
        if tensor.dtype == torch.uint8 or (task in ("classification", "segmentation") and truth):
            return tensor.to(torch.int64)
        return tensor
    return restore
