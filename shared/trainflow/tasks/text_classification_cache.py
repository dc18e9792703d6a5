"""The HDF5 cache for text classification: every text tokenized once, so training never tokenizes.

    tokens.h5
        attrs: format, info (JSON: the dataset's task, kind, class names), dataset_sha256, max_length,
               truncated (JSON: {split: texts cut to max_length}), vocab_size, tokenizer (where it came from)
        <split>/token_ids (total,) int32   every record's ids (special tokens included), one after another
        <split>/offsets   (n + 1,) int64   record i is token_ids[offsets[i]:offsets[i + 1]]
        <split>/lengths   (n,)     int32   tokens per record after truncation
        <split>/labels    (n,)     int64
        <split>/record_ids, <split>/texts   (n,) strings (the texts feed the TF-IDF baseline)
    tokenizer/            the tokenizer that made the ids (exported with the model)

Records keep their own length; a batch is padded only to its longest record (trainflow.data.loading.batch_collate),
and with `length_buckets` a training step draws records of similar length (trainflow.training.bucketed_batches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from trainflow.atomic_files import atomic_directory
from trainflow.config.text_encoder import TextEncoderConfig
from trainflow.data.manifest import SPLITS, manifest_sha256, read_dataset_info, read_manifest
from trainflow.errors import ConfigError, UserFacingError
from trainflow.tasks.text_classification_tokenizers import (
    check_tokenizer_fits, load_tokenizer, max_positions, resolve_model_folder, train_wordpiece,
)

TOKEN_CACHE_FILE = "tokens.h5"
TOKENIZER_FOLDER = "tokenizer"
CACHE_FORMAT = "trainflow-token-cache"


def cache_tokenizer(text_cfg: TextEncoderConfig, train_texts: list[str]) -> tuple[Any, str]:
    """(tokenizer, where it came from): the configured folder, the pretrained encoder's, or one trained on `train_texts`."""
    if text_cfg.pretrained:  # checked again here: a config edited in the Kubeflow UI skips the load-time checks
        encoder = resolve_model_folder(text_cfg.pretrained, "model.text_encoder.pretrained")
        positions = max_positions(encoder)
        if positions is not None and text_cfg.max_length > positions:
            raise ConfigError(f"model.text_encoder.max_length: {text_cfg.max_length} tokens, but the encoder in {encoder} "
                              f"reads at most {positions}; lower max_length")
    if text_cfg.tokenizer:
        folder = resolve_model_folder(text_cfg.tokenizer, "model.text_encoder.tokenizer")
        tokenizer = load_tokenizer(folder, "model.text_encoder.tokenizer")
        if text_cfg.pretrained:
            check_tokenizer_fits(tokenizer, resolve_model_folder(text_cfg.pretrained, "model.text_encoder.pretrained"),
                                 "model.text_encoder.tokenizer")
        return tokenizer, str(text_cfg.tokenizer)
    if text_cfg.pretrained:
        folder = resolve_model_folder(text_cfg.pretrained, "model.text_encoder.pretrained")
        return load_tokenizer(folder, "model.text_encoder.pretrained"), str(text_cfg.pretrained)
    tokenizer = train_wordpiece(train_texts, text_cfg.vocab_size, text_cfg.max_length)
    return tokenizer, f"WordPiece trained on the {len(train_texts)} train texts"


def _tokenized(tokenizer: Any, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """(ids per text, truncated to max_length with the closing special token kept; how many were longer)."""
    if not texts:
        return [], 0
    full = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    cut = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return cut, sum(len(ids) > max_length for ids in full)


def _write_split(group: h5py.Group, ids: list[list[int]], labels: list[int], record_ids: list[str], texts: list[str]) -> None:
    lengths = np.array([len(row) for row in ids], dtype=np.int32)
    group.create_dataset("token_ids", data=np.array([t for row in ids for t in row], dtype=np.int32))
    group.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64))
    group.create_dataset("lengths", data=lengths)
    group.create_dataset("labels", data=np.array(labels, dtype=np.int64))
    group.create_dataset("record_ids", data=record_ids, dtype=h5py.string_dtype())
    group.create_dataset("texts", data=texts, dtype=h5py.string_dtype())


def build_token_cache(dataset_dir: str | Path, output_dir: str | Path, text_cfg: TextEncoderConfig) -> dict[str, Any]:
    """Tokenize every record of an ingest_split Dataset folder of texts into `output_dir` (written atomically).

    Returns the artifact metadata: counts, dataset_sha256, kind, max_length, num_truncated, vocab_size.
    Raises UserFacingError for a dataset that is not a table of texts or an empty train split, ConfigError /
    MissingWeightsError for a tokenizer that cannot be found or does not fit the encoder.
    """
    root = Path(dataset_dir).resolve()
    info = read_dataset_info(root)
    if info.get("kind") != "text":
        raise UserFacingError(f"the dataset in {root} holds {info.get('kind')} records, not texts; ingest a table with "
                              "ingest.text_column for task text_classification")
    splits = {split: read_manifest(root, split) for split in SPLITS}
    if not splits["train"]:
        raise UserFacingError("the train split is empty; ingest more records or change ingest.split")
    tokenizer, source = cache_tokenizer(text_cfg, [entry.caption or "" for entry in splits["train"]])
    truncated: dict[str, int] = {}
    with atomic_directory(output_dir) as staging:
        tokenizer.save_pretrained(str(staging / TOKENIZER_FOLDER))
        with h5py.File(staging / TOKEN_CACHE_FILE, "w") as handle:
            for split, entries in splits.items():
                texts = [entry.caption or "" for entry in entries]
                ids, truncated[split] = _tokenized(tokenizer, texts, text_cfg.max_length)
                _write_split(handle.create_group(split), ids, [int(entry.label) for entry in entries],
                             [entry.record_id for entry in entries], texts)
            handle.attrs.update({
                "format": CACHE_FORMAT, "info": json.dumps(info), "dataset_sha256": manifest_sha256(root),
                "max_length": text_cfg.max_length, "truncated": json.dumps(truncated), "vocab_size": len(tokenizer),
                "tokenizer": source,
            })
    total, cut = sum(len(entries) for entries in splits.values()), sum(truncated.values())
    if cut:
        print(f"build_cache: warning: {cut} of {total} texts are longer than model.text_encoder.max_length "
              f"({text_cfg.max_length} tokens); only their first {text_cfg.max_length} tokens are used", flush=True)
    return {**{f"num_{split}": len(entries) for split, entries in splits.items()}, "dataset_sha256": manifest_sha256(root),
            "kind": "text", "max_length": text_cfg.max_length, "num_truncated": cut, "vocab_size": len(tokenizer)}


def read_token_cache_attrs(cache_dir: str | Path) -> dict[str, Any]:
    """The cache's attributes (info and truncated decoded); UserFacingError when `cache_dir` holds no token cache."""
    path = Path(cache_dir) / TOKEN_CACHE_FILE
    if not path.is_file():
        raise UserFacingError(f"{path} is missing; the cache input must be the output of the build_cache stage for "
                              "task text_classification")
    with h5py.File(path, "r") as handle:
        attrs = dict(handle.attrs)
    if attrs.get("format") != CACHE_FORMAT:
        raise UserFacingError(f"{path} is not a token cache; the task and the cache do not match")
    return {**attrs, "info": json.loads(attrs["info"]), "truncated": json.loads(attrs["truncated"])}


def length_boundaries(cache_dir: str | Path, buckets: int) -> list[int]:
    """Token counts that cut the train split's lengths into `buckets` groups of about equal size (ascending)."""
    with h5py.File(Path(cache_dir) / TOKEN_CACHE_FILE, "r") as handle:
        lengths = handle["train"]["lengths"][()]
    cuts = np.quantile(lengths, np.linspace(0, 1, buckets + 1)[1:-1], method="higher") if len(lengths) else []
    return sorted({int(c) for c in cuts})


class TokenRecords(Dataset):
    """One split of a token cache in memory: record i is {"input_ids": 1-D int64 ids, "length", "label": int64}.

    With `boundaries` (from `length_boundaries`), `bucket_ids` puts each record in the band of lengths it falls
    in (the engine then draws every step from one bucket); without them there are no buckets.
    """

    def __init__(self, cache_dir: str | Path, split: str, boundaries: list[int] | None = None) -> None:
        read_token_cache_attrs(cache_dir)
        with h5py.File(Path(cache_dir) / TOKEN_CACHE_FILE, "r") as handle:
            group = handle[split]
            self.token_ids = torch.from_numpy(group["token_ids"][()].astype(np.int64))
            self.offsets = group["offsets"][()].tolist()
            self.lengths = group["lengths"][()]
            self.labels = torch.from_numpy(group["labels"][()])
            self.record_ids = [r.decode() if isinstance(r, bytes) else str(r) for r in group["record_ids"][()]]
        self.bucket_ids = np.searchsorted(boundaries, self.lengths, side="right").tolist() if boundaries else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return {"input_ids": self.token_ids[start:stop], "length": torch.tensor(stop - start), "label": self.labels[index]}


def split_texts(cache_dir: str | Path, split: str) -> tuple[list[str], np.ndarray]:
    """(texts, labels) of one split, in record order: what a baseline on the raw text is fitted or scored on."""
    with h5py.File(Path(cache_dir) / TOKEN_CACHE_FILE, "r") as handle:
        group = handle[split]
        texts = [t.decode() if isinstance(t, bytes) else str(t) for t in group["texts"][()]]
        return texts, group["labels"][()]
