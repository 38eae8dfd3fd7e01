"""``model``: the base model every adapter sits on (read by ``qlp_ray.models``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from qlp_ray.core.config.base import Section

BUILTIN_TINY = "builtin:tiny-llama"


class TinyModelConfig(Section):
    vocab_size: int = Field(2048, ge=256, description="Byte-level BPE vocabulary size.")
    hidden_size: int = Field(128, ge=16, description="Model width.")
    num_layers: int = Field(4, ge=1, description="Number of decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    intermediate_size: int = Field(256, ge=16, description="MLP width.")
    max_position: int = Field(256, ge=32, description="Longest sequence the model sees.")
    pretrain_steps: int = Field(300, ge=0, description="Pre-training steps on the bundled corpus.")
    batch_size: int = Field(8, ge=1, description="Pre-training batch size.")
    learning_rate: float = Field(3e-3, gt=0, description="Pre-training peak learning rate.")
    seed: int = Field(0, description="Seed for tokenizer, init and data order.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"`model.tiny.hidden_size` ({self.hidden_size}) must be divisible by "
                f"`model.tiny.num_heads` ({self.num_heads})."
            )
        return self


class ModelConfig(Section):
    base_model: str = Field(
        BUILTIN_TINY,
        description="Base model: 'builtin:tiny-llama', a Hugging Face id or a local path.",
    )
    max_seq_len: int = Field(256, ge=16, description="Truncate training examples to this length.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Precision of the base model on a CUDA GPU (serving, and mixed precision in "
        "training): auto = bfloat16 on a GPU that supports it, else float16. On CPU everything "
        "runs float32 (an explicit half precision falls back, with a warning).",
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Built-in model.")
