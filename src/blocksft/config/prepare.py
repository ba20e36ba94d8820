"""The knobs of ``blocksft prepare``: defaults are the reference ``pt.py``'s, including its prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The reference's Alpaca-style wrapper (pt.py), byte for byte.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{query}\n\n### Response: Let's think step by step."
)


@dataclass
class PrepareConfig:
    """Everything ``blocksft prepare`` does is set here; defaults are the reference ``pt.py``'s."""

    output: str = field(default="MathQA_256.pt", metadata={"help": "record file to write (.pt)"})
    model: str = field(
        default="GSAI-ML/LLaDA-8B-Instruct",
        metadata={"help": "tokenizer (hub id or local folder) whose chat template renders the data"},
    )
    dataset: str = field(
        default="meta-math/MetaMathQA",
        metadata={"help": "hub dataset id, or a local .jsonl/.json/.parquet file or folder"},
    )
    split: str = field(default="train", metadata={"help": "dataset split (hub datasets and folders)"})
    dataset_config: str | None = field(
        default=None, metadata={"help": "hub dataset configuration, for datasets that have several"}
    )
    max_len: int = field(
        default=256, metadata={"help": "drop (never truncate) samples with more tokens than this"}
    )
    max_samples: int = field(
        default=20000, metadata={"help": "keep at most this many samples, in dataset order (0 = all)"}
    )
    filter_type: str = field(
        default="GSM", metadata={"help": "skip rows whose 'type' field contains this text ('' keeps all)"}
    )
    query_field: str = field(default="query", metadata={"help": "field holding the question"})
    response_field: str = field(default="response", metadata={"help": "field holding the answer"})
    prompt_template: str = field(
        default=ALPACA_PROMPT,
        metadata={"help": "prompt text with {query}, or a path to a text file holding it (the reference's)"},
    )
    num_proc: int = field(
        default=1,
        metadata={"help": "processes for datasets.map (a fast tokenizer already uses several threads)"},
    )
    batch_size: int = field(default=1000, metadata={"help": "rows rendered and tokenized per batch"})
    on_boundary_mismatch: Literal["split", "error", "skip"] = field(
        default="split",
        metadata={
            "help": "a row whose tokens merge across the prompt/answer boundary: 'split' encodes its "
            "prompt and answer apart, so the prompt has the ids it has at inference (counted and "
            "reported); 'error' stops; 'skip' drops the row (counted)"
        },
    )
    on_special_text: Literal["error", "skip"] = field(
        default="error",
        metadata={
            "help": "a row whose text holds a special token's text (e.g. '<|eot_id|>'), which the tokenizer "
            "would encode as a control token: 'error' stops naming the row, 'skip' drops it (counted)"
        },
    )
    block_size: int = field(default=32, metadata={"help": "block size for the blocks-per-answer histogram"})
    plot: bool = field(default=False, metadata={"help": "also write the histograms to <output>.png"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "allow the tokenizer's own code from the hub"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output file"})

    def __post_init__(self):
        for name in ("output", "model", "dataset", "query_field", "response_field", "prompt_template"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, not {self.max_len}")
        if self.max_samples < 0:
            raise ValueError(f"max_samples must be >= 0 (0 = all), not {self.max_samples}")
        for name in ("num_proc", "batch_size", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
