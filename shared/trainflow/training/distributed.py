"""Who am I in a distributed run: read torchrun's (and the Kubeflow operators') environment.

The same entrypoint runs alone or under torchrun. torchrun sets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process it starts; it reads
its own settings from the PET_* variables that a PyTorchJob (nprocPerNode) and
a Trainer v2 TrainJob set on each pod. A PyTorchJob without nprocPerNode sets
RANK/WORLD_SIZE/MASTER_* itself, which env:// initialisation also reads.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

from trainflow.errors import UserFacingError


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise UserFacingError(f"environment variable {name}={value!r} is not an integer; check the launcher's settings") from None


def process_info_from_env() -> ProcessInfo:
    """RANK/LOCAL_RANK/WORLD_SIZE, or a single process when they are absent.

    PET_* variables without RANK mean a Kubeflow pod started the worker
    directly: Trainer v2 does not run torchrun for you, so say how to.
    """
    if "RANK" not in os.environ and _int_env("PET_NNODES", 1) * _int_env("PET_NPROC_PER_NODE", 1) > 1:
        raise UserFacingError(
            "PET_NNODES/PET_NPROC_PER_NODE ask for several processes but RANK is not set: start the worker with "
            "`torchrun -m trainflow train-worker ...` (torchrun reads the PET_* variables)"
        )
    world = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    if not 0 <= rank < max(world, 1):
        raise UserFacingError(f"RANK={rank} is outside WORLD_SIZE={world}; check the launcher's environment")
    return ProcessInfo(rank=rank, local_rank=_int_env("LOCAL_RANK", 0), world_size=world)


def init_process_group(info: ProcessInfo, device: torch.device, timeout_minutes: int = 30) -> None:
    """Join the process group (nccl on CUDA, gloo on CPU) unless running alone or already joined."""
    if not info.distributed or dist.is_initialized():
        return
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise UserFacingError(f"WORLD_SIZE={info.world_size} but {name} is not set; start the worker with torchrun")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(minutes=timeout_minutes))


def all_reduce_sum(tensor: torch.Tensor, info: ProcessInfo) -> torch.Tensor:
    """Sum a tensor over ranks (a copy; the input is untouched). Alone, the tensor itself."""
    if not info.distributed:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def all_reduce_max(tensor: torch.Tensor, info: ProcessInfo) -> torch.Tensor:
    """Element-wise maximum over ranks (a copy). Alone, the tensor itself."""
    if not info.distributed:
        return tensor
    largest = tensor.clone()
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return largest


def all_gather_bytes(payload: bytes, info: ProcessInfo, device: torch.device) -> list[bytes]:
    """Every rank's bytes, in rank order (tensors of padded bytes: nothing is pickled)."""
    if not info.distributed:
        return [payload]
    length = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(info.world_size)]
    dist.all_gather(lengths, length)
    longest = int(max(item.item() for item in lengths))
    buffer = torch.zeros(longest, dtype=torch.uint8, device=device)
    buffer[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device) if payload else buffer[:0]
    gathered = [torch.zeros_like(buffer) for _ in range(info.world_size)]
    dist.all_gather(gathered, buffer)
    return [bytes(chunk[: int(n.item())].cpu().numpy().tobytes()) for chunk, n in zip(gathered, lengths)]


def barrier(info: ProcessInfo) -> None:
    if info.distributed:
        dist.barrier()


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
