"""Where pretrained metric weights live on disk. Nothing here downloads."""

from __future__ import annotations

import os
from pathlib import Path

from trainflow.config import looks_like_local_path
from trainflow.errors import MissingWeightsError

FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth"}


def torch_hub_checkpoints() -> Path:
    """The folder torch.hub caches weights in (TORCH_HOME/hub/checkpoints)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def require_file(path: Path, what: str, how: str) -> Path:
    if not path.is_file():
        raise MissingWeightsError(f"{what} weights file {path} is missing; {how}")
    return path


def fid_inception_weights(explicit: str | None) -> Path:
    """pytorch-fid's InceptionV3 weights: `explicit` (--weights / score.fid_features.path), else TORCH_HOME's file.

    Raises MissingWeightsError naming the path that was looked at.
    """
    if explicit:
        return require_file(Path(explicit).expanduser(), "FID InceptionV3", "fix the path (trainflow fid --weights, or score.fid_features.path)")
    return require_file(
        torch_hub_checkpoints() / FID_INCEPTION_FILE, "FID InceptionV3",
        f"copy pytorch-fid's {FID_INCEPTION_FILE} there (TORCH_HOME sets the folder) or name the file with "
        "trainflow fid --weights FILE (score.fid_features.path in a run config, or use score.fid_features.kind: classifier)",
    )


def lpips_backbone_weights(net: str = "alex") -> Path:
    return require_file(
        torch_hub_checkpoints() / LPIPS_BACKBONE_FILES[net], f"LPIPS {net} backbone",
        "copy torchvision's ImageNet weights there (TORCH_HOME sets the folder) or set score.lpips: false",
    )


def hf_model_folder(name_or_path: str, required_file: str = "config.json") -> Path:
    """A local folder for a Hugging Face model: the path itself, or its snapshot in HF_HOME's cache."""
    if looks_like_local_path(name_or_path):
        return require_file(Path(name_or_path).expanduser() / required_file, f"model {name_or_path}", "fix the path").parent
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except LocalEntryNotFoundError:
        home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise MissingWeightsError(
            f"model '{name_or_path}' is not in the Hugging Face cache under HF_HOME={home}; "
            f"download it where the hub is reachable (`hf download {name_or_path}`) or give a local folder"
        ) from None
