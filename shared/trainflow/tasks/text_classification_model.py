"""A transformers encoder with a classification head, and its model folder.

    <folder>/config.json        format, task, class_names, pooling, max_length, dropout
    <folder>/encoder/config.json   the encoder's transformers config (rebuilt with AutoModel.from_config)
    <folder>/model.safetensors  every weight of the classifier (encoder.* and head.*)
    <folder>/tokenizer/         the tokenizer the ids were made with (transformers fast tokenizer files)

Parameters are named `encoder.*` and `head.*`, so train.optimizer.module_learning_rates can give the pretrained
encoder a smaller learning rate than the new head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_model
from torch import nn

from trainflow.config.text_encoder import TextEncoderConfig
from trainflow.errors import MissingWeightsError, UserFacingError

FOLDER_FORMAT = "trainflow-text-classifier"
CONFIG_FILE, WEIGHTS_FILE, ENCODER_FOLDER, TOKENIZER_FOLDER = "config.json", "model.safetensors", "encoder", "tokenizer"


class TextClassifier(nn.Module):
    """Token ids and lengths -> class logits: encoder states pooled (masked mean or first token), dropout, linear."""

    def __init__(self, encoder: nn.Module, num_classes: int, pooling: str, dropout: float) -> None:
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # BERT's pooler is not used (we pool ourselves); unused weights would break DDP
        self.encoder, self.pooling = encoder, pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(encoder.config.hidden_size), num_classes)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]
        states = self.encoder(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.head(self.dropout(pooled))


def build_encoder(cfg: TextEncoderConfig, vocab_size: int, pretrained_folder: Path | None) -> nn.Module:
    """The pretrained encoder in `pretrained_folder`, or a small BERT built from `cfg` for `vocab_size` tokens."""
    from transformers import AutoModel, BertConfig

    if pretrained_folder is not None:
        try:
            return AutoModel.from_pretrained(str(pretrained_folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise MissingWeightsError(f"model.text_encoder.pretrained: no transformers encoder loads from "
                                      f"{pretrained_folder} ({type(exc).__name__}); name a folder with config.json and "
                                      "model.safetensors") from None
    config = BertConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                        max_position_embeddings=cfg.max_length, pad_token_id=0)
    return AutoModel.from_config(config)


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def save_text_classifier(model: nn.Module, folder: Path, tokenizer_folder: Path, meta: dict[str, Any]) -> None:
    """Write the model folder into `folder` (the train stage stages it and swaps it in whole)."""
    import shutil

    network = _unwrap(model)
    folder.mkdir(parents=True, exist_ok=True)
    network.encoder.config.save_pretrained(str(folder / ENCODER_FOLDER))
    shutil.copytree(tokenizer_folder, folder / TOKENIZER_FOLDER, dirs_exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps({"format": FOLDER_FORMAT, "format_version": 1, **meta}, indent=2,
                                                 sort_keys=True) + "\n")
    save_model(network, str(folder / WEIGHTS_FILE), metadata={"format": FOLDER_FORMAT})


def load_text_classifier(folder: Path) -> tuple[TextClassifier, Any, dict[str, Any]]:
    """(classifier in eval mode, its tokenizer, its config.json); UserFacingError / MissingWeightsError naming the file."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise MissingWeightsError(f"{config_path} is missing; the folder must be a text classifier the train stage exported")
    meta = json.loads(config_path.read_text())
    if meta.get("format") != FOLDER_FORMAT:
        raise UserFacingError(f"{folder} holds a {meta.get('format') or meta.get('meta', {}).get('task')} model, not a "
                              "text classifier")
    for part in (WEIGHTS_FILE, ENCODER_FOLDER, TOKENIZER_FOLDER):
        if not (folder / part).exists():
            raise MissingWeightsError(f"{folder / part} is missing; export the text classifier again")
    encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(folder / ENCODER_FOLDER), local_files_only=True))
    model = TextClassifier(encoder, len(meta["class_names"]), meta["pooling"], meta["dropout"])
    state = load_file(str(folder / WEIGHTS_FILE))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserFacingError(f"{folder / WEIGHTS_FILE} does not fit the encoder in {folder / ENCODER_FOLDER} "
                              f"({str(exc).splitlines()[0]})") from None
    tokenizer = AutoTokenizer.from_pretrained(str(folder / TOKENIZER_FOLDER), local_files_only=True)
    return model.eval(), tokenizer, meta
