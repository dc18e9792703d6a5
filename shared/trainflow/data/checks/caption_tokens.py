"""Captions longer than the text encoder keeps: a warning with the count, never a rejection.

Tokens are counted with the base model's tokenizer when it is on disk (a diffusers folder's tokenizer/, or the
Hugging Face cache for a hub id, never downloaded); otherwise whitespace-separated words are counted against
ingest.max_caption_tokens. A BPE tokenizer splits words further, so the estimate can only under-count.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

from trainflow.data.checks.quarantine import DataWarning


@dataclasses.dataclass(frozen=True)
class CaptionTokenCounter:
    count: Callable[[Sequence[str]], list[int]]  # tokens per caption (including start/end tokens for a tokenizer)
    max_tokens: int  # what the text encoder keeps
    method: str  # how tokens are counted, for the report


def whitespace_counter(max_tokens: int) -> CaptionTokenCounter:
    return CaptionTokenCounter(lambda captions: [len(c.split()) for c in captions], max_tokens,
                               f"estimated as whitespace-separated words against ingest.max_caption_tokens {max_tokens}")


def _tokenizer_folder(model_base: str) -> Path | None:
    folder = Path(model_base).expanduser()
    if (folder / "tokenizer").is_dir():
        return folder / "tokenizer"
    if folder.exists() or model_base.startswith(("/", ".", "~")):
        return None
    from huggingface_hub import snapshot_download

    try:  # a hub id: only what is already in the local cache
        cached = Path(snapshot_download(model_base, allow_patterns=["tokenizer/*"], local_files_only=True))
    except Exception:  # not cached, or not a hub id at all: fall back to the estimate
        return None
    return cached / "tokenizer" if (cached / "tokenizer").is_dir() else None


def caption_token_counter(model_base: str | None, max_caption_tokens: int) -> CaptionTokenCounter:
    """The base model's tokenizer when it is on disk, else the whitespace estimate (which says so in `method`)."""
    folder = _tokenizer_folder(model_base) if model_base else None
    if folder is None:
        return whitespace_counter(max_caption_tokens)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # an unreadable tokenizer must not stop ingest; the estimate still warns
        counter = whitespace_counter(max_caption_tokens)
        return dataclasses.replace(counter, method=f"{counter.method} (tokenizer in {folder} did not load: {type(exc).__name__})")
    return CaptionTokenCounter(lambda captions: [len(ids) for ids in tokenizer(list(captions))["input_ids"]],
                               int(tokenizer.model_max_length),
                               f"counted with the base model's {type(tokenizer).__name__} from {folder}")


def long_caption_warning(captions: dict[str, str], counter: CaptionTokenCounter) -> DataWarning | None:
    """A warning naming how many captions (by record id) exceed what the text encoder keeps, or None."""
    ids = sorted(captions)
    counts = counter.count([captions[i] for i in ids]) if ids else []
    long = [record_id for record_id, count in zip(ids, counts) if count > counter.max_tokens]
    if not long:
        return None
    return DataWarning(
        "caption_too_long", len(long),
        f"{len(long)} of {len(ids)} captions are longer than the {counter.max_tokens} tokens the text encoder keeps "
        f"({counter.method}); only their first {counter.max_tokens} tokens are used", tuple(long[:5]))
