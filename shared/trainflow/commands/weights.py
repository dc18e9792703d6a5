"""Every weight file a run config needs, where each is expected, and fetching them for air-gapped clusters.

`weights_needed` lists them (base diffusers pipeline, FID InceptionV3, LPIPS
AlexNet, CLIP model, torchvision ImageNet weights); `fetch_weights` downloads
them into one folder laid out as both HF_HOME (hub/models--org--name) and
TORCH_HOME (hub/checkpoints/<file>), so the folder can be copied as-is into the
cluster's weights-cache volume and mounted as HF_HOME and TORCH_HOME.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Callable

from trainflow.config import RunConfig, looks_like_local_path
from trainflow.diffusion.model_loading import REQUIRED_PARTS
from trainflow.metrics.weights import FID_INCEPTION_FILE, LPIPS_BACKBONE_FILES, torch_hub_checkpoints

TORCHVISION_URL = "https://download.pytorch.org/models/{}"


@dataclasses.dataclass(frozen=True)
class WeightEntry:
    """One weight file (or hub model) a config needs.

    kind: "torch_file" (a file in TORCH_HOME/hub/checkpoints, from `source`, a URL),
    "hub_model" (a Hugging Face repo id in `source`, cached under HF_HOME/hub) or
    "local" (a path the config names; never fetched). `path` is where it is expected.
    """

    what: str
    kind: str
    source: str
    path: Path
    required: bool
    config_field: str

    def present(self) -> bool:
        if self.kind == "hub_model":
            return _hub_snapshot(self.source) is not None
        return self.path.exists()


def _hf_hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _hub_entry(what: str, repo_id: str, required: bool, field: str) -> WeightEntry:
    folder = _hf_hub_cache() / f"models--{repo_id.replace('/', '--')}"
    return WeightEntry(what, "hub_model", repo_id, folder, required, field)


def _torch_entry(what: str, file_name: str, url: str, required: bool, field: str) -> WeightEntry:
    return WeightEntry(what, "torch_file", url, torch_hub_checkpoints() / file_name, required, field)


def _local_entry(what: str, path: str, required: bool, field: str) -> WeightEntry:
    return WeightEntry(what, "local", path, Path(path).expanduser(), required, field)


def _base_model_entries(base: str) -> list[WeightEntry]:
    if not looks_like_local_path(base):
        return [_hub_entry("base diffusers pipeline", base, True, "model.base")]
    folder = Path(base).expanduser()
    parts = ["model_index.json", *_pipeline_parts(folder)]
    return [_local_entry(f"base pipeline {part}", str(folder / part), True, "model.base") for part in parts]


def _pipeline_parts(folder: Path) -> tuple[str, ...]:
    """The parts the base's family loads (SDXL adds a second text encoder and tokenizer); SD's when unreadable."""
    from trainflow.diffusion.model_families import detect_family
    from trainflow.errors import ConfigError

    try:
        return detect_family(folder).parts
    except ConfigError:
        return REQUIRED_PARTS


def weights_needed(config: RunConfig) -> list[WeightEntry]:
    """The weight files `config` needs, in pipeline order; `required` ones stop a run when missing.

    Optional ones (CLIP, LPIPS) only turn their metric into 'skipped'. Reads nothing but the config.
    """
    from trainflow.tasks import get_task

    entries: list[WeightEntry] = []
    model, score = config.model, config.score
    if get_task(config.task).generates_images:  # the base pipeline and the score stage's scorers
        if model.base:
            entries += _base_model_entries(model.base)
        fid = score.fid_features
        if fid.kind == "inception" and not fid.path:
            from pytorch_fid.inception import FID_WEIGHTS_URL

            entries.append(_torch_entry("FID InceptionV3 (pytorch-fid)", FID_INCEPTION_FILE, FID_WEIGHTS_URL, True, "score.fid_features"))
        elif fid.path:
            entries.append(_local_entry(f"FID features ({fid.kind})", fid.path, True, "score.fid_features.path"))
        if score.prompt_classifier:
            entries.append(_local_entry("prompt-accuracy classifier", score.prompt_classifier, False, "score.prompt_classifier"))
        if score.lpips:
            entries.append(_torch_entry("LPIPS AlexNet backbone (torchvision ImageNet)", LPIPS_BACKBONE_FILES["alex"],
                                        TORCHVISION_URL.format(LPIPS_BACKBONE_FILES["alex"]), False, "score.lpips"))
        if score.clip_model:
            if looks_like_local_path(score.clip_model):
                entries.append(_local_entry("CLIP model", score.clip_model, False, "score.clip_model"))
            else:
                entries.append(_hub_entry("CLIP model", score.clip_model, False, "score.clip_model"))
    elif model.weights_path:
        entries.append(_local_entry("pretrained weights", model.weights_path, True, "model.weights_path"))
    elif model.pretrained and model.architecture:
        entries.append(_torchvision_entry(model.architecture))
    return entries


def _torchvision_entry(architecture: str) -> WeightEntry:
    import torchvision

    url = torchvision.models.get_model_weights(architecture).DEFAULT.url
    return _torch_entry(f"{architecture} ImageNet weights (torchvision)", url.rsplit("/", 1)[-1], url, True, "model.pretrained")


def inventory_lines(entries: list[WeightEntry]) -> tuple[list[str], bool]:
    """Human-readable lines (one per entry) and whether every required entry is present."""
    lines, all_required = [], True
    for entry in entries:
        present = entry.present()
        all_required &= present or not entry.required
        status = "present" if present else ("MISSING" if entry.required else "missing (optional)")
        lines.append(f"{status:<19} {entry.what} [{entry.config_field}]: {entry.path}")
    if not entries:
        lines.append("this config needs no pretrained weight files")
    homes = f"HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')} TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')}"
    lines.append(f"looked under {homes}")
    return lines, all_required


def _download_hub_model(repo_id: str, hub_cache: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id, cache_dir=str(hub_cache))


def _download_torch_file(url: str, target: Path) -> None:
    from torch.hub import download_url_to_file

    download_url_to_file(url, str(target), progress=False)


def fetch_plan(entries: list[WeightEntry], target: Path) -> list[tuple[WeightEntry, Path]]:
    """Where each fetchable entry lands under `target`: hub models in target/hub (HF_HOME layout),
    torch files in target/hub/checkpoints (TORCH_HOME layout). Local paths are not fetchable and are left out."""
    plan = []
    for entry in entries:
        if entry.kind == "hub_model":
            plan.append((entry, target / "hub" / entry.path.name))
        elif entry.kind == "torch_file":
            plan.append((entry, target / "hub" / "checkpoints" / entry.path.name))
    return plan


def fetch_weights(
    entries: list[WeightEntry], target: str | Path,
    download_hub_model: Callable[[str, Path], None] = _download_hub_model,
    download_torch_file: Callable[[str, Path], None] = _download_torch_file,
) -> tuple[list[str], list[str]]:
    """Download every hub model and torch file into `target`; returns (done lines, failure lines).

    A file already there is kept. Each failure (network, missing repo, disk) is
    one sentence naming the file and its source; the others still download.
    """
    target = Path(target)
    (target / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    done, failed = [], []
    for entry, destination in fetch_plan(entries, target):
        try:
            if entry.kind == "hub_model":
                download_hub_model(entry.source, target / "hub")
            elif not destination.is_file():
                download_torch_file(entry.source, destination)
        except Exception as exc:  # any hub/network/disk failure ends the same way: one line, the next file goes on
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            failed.append(f"could not fetch {entry.what} from {entry.source} into {destination} ({type(exc).__name__}: {first_line}); "
                          "check the network or proxy, or copy the file there by hand")
            continue
        done.append(f"fetched {entry.what} -> {destination}")
    return done, failed


def weights_check_command(args: argparse.Namespace) -> int:
    from trainflow.config import load_config

    lines, all_required = inventory_lines(weights_needed(load_config(args.config, check_local_paths=False)))
    print("\n".join(lines))
    return 0 if all_required else 1


def weights_fetch_command(args: argparse.Namespace) -> int:
    from trainflow.config import load_config

    done, failed = fetch_weights(weights_needed(load_config(args.config, check_local_paths=False)), args.to)
    print("\n".join(done + failed) or "nothing to fetch: this config names only local weight files")
    return 1 if failed else 0
