"""The tokenizer of a text classifier: loaded from a folder (or the Hugging Face cache), or trained on the train split.

A built encoder gets a WordPiece tokenizer trained with the `tokenizers` library on the train split's texts only
(so nothing about val/test leaks into the vocabulary), with BERT's normalisation and special tokens; [PAD] is id 0
and the other tokens are numbered in sorted order, so a build is reproducible.
Either way the result is a transformers fast tokenizer, saved beside the cache and into the exported model folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from trainflow.errors import ConfigError, MissingWeightsError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def resolve_model_folder(name: str, field: str) -> Path:
    """A local folder as is, or a hub id's snapshot in the Hugging Face cache (never downloaded)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    if name.startswith(("/", ".", "~")):
        raise MissingWeightsError(f"{field}: folder {name} does not exist; point it at a transformers model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        raise MissingWeightsError(f"{field}: {name!r} is neither a folder nor in the Hugging Face cache (HF_HOME); "
                                  "copy the model folder here and name its path") from None


def load_tokenizer(folder: Path, field: str):
    """A transformers tokenizer from `folder`; ConfigError naming `field` when there is none to load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ConfigError(f"{field}: no tokenizer loads from {folder} ({type(exc).__name__}); name a folder with "
                          "tokenizer.json or vocab files") from None


def train_wordpiece(texts: Iterable[str], vocab_size: int, max_length: int):
    """A WordPiece tokenizer of at most `vocab_size` tokens trained on `texts`, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    # The trainer picks the same tokens every time but numbers them in a varying (parallel) order: renumber them
    # in a fixed one so the same texts always give the same ids.
    learned = sorted(set(tokenizer.get_vocab()) - set(SPECIAL_TOKENS))
    tokenizer.model = models.WordPiece(vocab={token: i for i, token in enumerate(SPECIAL_TOKENS + learned)}, unk_token="[UNK]")
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)


def encoder_vocab_size(folder: Path) -> int | None:
    """The vocabulary size the encoder in `folder` embeds (from its config.json), or None when it does not say."""
    from transformers import AutoConfig

    try:
        return int(getattr(AutoConfig.from_pretrained(str(folder), local_files_only=True), "vocab_size"))
    except Exception:
        return None


def check_tokenizer_fits(tokenizer: Any, encoder_folder: Path, tokenizer_field: str) -> None:
    """ConfigError when the tokenizer produces ids the encoder has no embedding for (a tokenizer of another model)."""
    embedded = encoder_vocab_size(encoder_folder)
    if embedded is not None and len(tokenizer) > embedded:
        raise ConfigError(f"{tokenizer_field}: the tokenizer has {len(tokenizer)} tokens but the encoder in "
                          f"{encoder_folder} embeds {embedded}; it belongs to another model, so use the tokenizer saved "
                          "with the encoder (leave model.text_encoder.tokenizer unset)")


def max_positions(folder: Path) -> int | None:
    """The longest input the encoder in `folder` reads (max_position_embeddings), or None when it does not say."""
    from transformers import AutoConfig

    try:
        value = getattr(AutoConfig.from_pretrained(str(folder), local_files_only=True), "max_position_embeddings", None)
    except Exception:
        return None
    return int(value) if value is not None else None
