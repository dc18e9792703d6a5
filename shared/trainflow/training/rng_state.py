"""Every random number generator's state as bytes, so a resumed run draws exactly the same numbers.

Python's `random`, NumPy's global generator, torch's CPU generator and every
CUDA generator. Encoded as JSON (with torch states as hex), never pickled.
"""

from __future__ import annotations

import json
import random

import numpy as np
import torch


def capture_rng_state() -> bytes:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().numpy().tobytes().hex(),
        "cuda": [s.numpy().tobytes().hex() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return json.dumps(state).encode("utf-8")


def restore_rng_state(payload: bytes) -> None:
    state = json.loads(payload.decode("utf-8"))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray.fromhex(state["torch"]), dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise RuntimeError(
                f"checkpoint holds {len(state['cuda'])} CUDA generator states but {torch.cuda.device_count()} GPUs are visible"
            )
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray.fromhex(s), dtype=torch.uint8) for s in state["cuda"]])
