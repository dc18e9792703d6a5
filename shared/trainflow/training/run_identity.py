"""What makes checkpoints resumable: the same task, settings and data, compared field by field."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

# Train settings that change speed or logging but not the numbers; a resume may change them.
RUNTIME_ONLY_KEYS = ("num_workers", "device", "logging", "data_loading", "preemption")


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    task: str
    settings: dict[str, Any]  # {"seed", "model", "train"} with runtime-only train keys removed
    dataset_sha256: str

    @classmethod
    def build(cls, task: str, seed: int, model: dict[str, Any], train: dict[str, Any], dataset_sha256: str) -> "RunIdentity":
        kept_train = {k: v for k, v in train.items() if k not in RUNTIME_ONLY_KEYS}
        return cls(task, {"seed": seed, "model": model, "train": kept_train}, dataset_sha256)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """One phrase per difference between this run and a checkpoint's identity."""
        found = []
        if saved.get("task") != self.task:
            found.append(f"task is {saved.get('task')!r} in the checkpoint, {self.task!r} now")
        if saved.get("dataset_sha256") != self.dataset_sha256:
            found.append(f"the dataset differs (content sha256 {str(saved.get('dataset_sha256'))[:12]}… in the "
                         f"checkpoint, {self.dataset_sha256[:12]}… now)")
        before, now = _flatten(saved.get("settings", {})), _flatten(self.settings)
        for key in sorted(set(before) | set(now)):
            if before.get(key, "<unset>") != now.get(key, "<unset>"):
                found.append(f"{key} is {before.get(key, '<unset>')!r} in the checkpoint, {now.get(key, '<unset>')!r} now")
        return found


def _flatten(payload: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and all buffers: what training changes. Frozen weights come from the base model."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if name in trainable or name in buffers:
            tensor = tensor.detach()
            # safetensors refuses tensors that share memory (tied weights): copy the repeats.
            pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else None
            state[name] = tensor.clone() if pointer in seen else tensor
            if pointer is not None:
                seen.add(pointer)
    return state


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    result = model.load_state_dict(tensors, strict=False)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    missing = [name for name in result.missing_keys if name not in frozen]
    if result.unexpected_keys or missing:
        raise ValueError(f"checkpoint does not fit the model (unexpected {result.unexpected_keys[:3]}, missing {missing[:3]})")
