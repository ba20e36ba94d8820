"""The knobs of ``blocksft generate``: the sampler's, plus what to load and how to show it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from blocksft.config.sampler import SamplerConfig


@dataclass
class GenerateConfig(SamplerConfig):
    """``blocksft generate``: the sampler's knobs plus what to load and how to show it."""

    model: str | None = field(
        default=None, metadata={"help": "checkpoint: hub id or local folder (required)"}
    )
    prompt: str | None = field(default=None, metadata={"help": "the prompt text (required)"})
    chat: bool = field(
        default=False,
        metadata={
            "help": "wrap the prompt as a user turn with the tokenizer's chat template (Instruct models)"
        },
    )
    seed: int = field(default=42, metadata={"help": "seed of the sampling generator (temperature, random)"})
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = field(
        default="auto", metadata={"help": "weights dtype (auto: the checkpoint's own dtype)"}
    )
    device: str | None = field(
        default=None, metadata={"help": "cuda, cpu, cuda:1, ... (none: cuda if available)"}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "use the checkpoint's own modeling code (no caches then)"}
    )
    mask_id: int | None = field(
        default=None,
        metadata={"help": "mask token id (none: the model config's, checked against the tokenizer)"},
    )
    stream: bool = field(default=False, metadata={"help": "show the canvas filling in, block by block"})

    def __post_init__(self):
        super().__post_init__()
        if not self.model:
            raise ValueError("--model is required (a hub id or a checkpoint folder)")
        if self.prompt is None:
            raise ValueError("--prompt is required")
        if self.stream and self.decode != "loop":
            raise ValueError(f"--stream shows every step: it needs --decode loop, not {self.decode}")
