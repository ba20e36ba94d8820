"""The block sampler's knobs as a dataclass, and the checks that the sampler and the config share.

:class:`SamplerConfig` holds the keyword arguments of :func:`blocksft.generation.sampler.generate`
(except the ids); ``blocksft generate``, ``blocksft eval`` and the lm-evaluation-harness model
take their decoding settings from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from blocksft.errors import BlocksftError

REMASKING = ("low_confidence", "random")
CACHES = ("prefix", "dual")
CONFIDENCES = ("float64", "llada")
DECODERS = ("loop", "static", "graph", "compiled")


def check_sampler_options(
    *,
    gen_length: int,
    block_length: int,
    steps: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    confidence: str = "float64",
    cfg_scale: float = 0.0,
    threshold: float | None = None,
    cache: str | None = None,
    cache_refresh: int | None = None,
    eos_token_ids: tuple[int, ...] = (),
    min_new_tokens: int = 0,
    stop_at_eos: bool = False,
    defer_eos: bool = False,
    decode: str = "loop",
) -> tuple[int, int]:
    """Check the sampler's options; return ``(num_blocks, steps_per_block)``.

    Raises:
        BlocksftError: naming the option and the fix.
    """
    if gen_length <= 0:
        raise BlocksftError(f"gen_length must be a positive number of tokens, got {gen_length}")
    if block_length <= 0:
        raise BlocksftError(f"block_length must be positive, got {block_length}")
    if gen_length % block_length:
        raise BlocksftError(
            f"gen_length {gen_length} is not a multiple of block_length {block_length}: "
            "choose lengths such that gen_length % block_length == 0"
        )
    num_blocks = gen_length // block_length
    if steps <= 0:
        raise BlocksftError(f"steps must be positive, got {steps}")
    if steps % num_blocks:
        raise BlocksftError(
            f"steps {steps} cannot be split evenly over the {num_blocks} blocks of gen_length {gen_length} / "
            f"block_length {block_length}: use a multiple of {num_blocks}"
        )
    if temperature < 0:
        raise BlocksftError(f"temperature must be >= 0, got {temperature}")
    if remasking not in REMASKING:
        raise BlocksftError(f"unknown remasking {remasking!r}; choose one of {', '.join(REMASKING)}")
    if confidence not in CONFIDENCES:
        raise BlocksftError(f"unknown confidence {confidence!r}; choose one of {', '.join(CONFIDENCES)}")
    if cfg_scale < 0:
        raise BlocksftError(f"cfg_scale must be >= 0, got {cfg_scale}")
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise BlocksftError(f"threshold must lie in [0, 1], got {threshold}")
        if remasking != "low_confidence":
            raise BlocksftError(
                "threshold decoding needs remasking='low_confidence' (it thresholds probabilities)"
            )
    if cache is not None and cache not in CACHES:
        raise BlocksftError(f"unknown cache {cache!r}; choose one of {', '.join(CACHES)} or none")
    if cache_refresh is not None:
        if cache is None:
            raise BlocksftError("cache_refresh needs a cache ('prefix' or 'dual')")
        if cache_refresh < 1:
            raise BlocksftError(f"cache_refresh must be >= 1 step, got {cache_refresh}")
    if min_new_tokens < 0:
        raise BlocksftError(f"min_new_tokens must be >= 0, got {min_new_tokens}")
    for name, wanted in (
        ("min_new_tokens", min_new_tokens > 0),
        ("stop_at_eos", stop_at_eos),
        ("defer_eos", defer_eos),
    ):
        if wanted and not eos_token_ids:
            raise BlocksftError(f"{name} needs eos_token_ids (e.g. the tokenizer's EOS and <|eot_id|> ids)")
    check_static_options(
        decode=decode,
        temperature=temperature,
        remasking=remasking,
        confidence=confidence,
        cfg_scale=cfg_scale,
    )
    return num_blocks, steps // num_blocks


def check_static_options(
    *, decode: str, temperature: float, remasking: str, confidence: str, cfg_scale: float
) -> None:
    """Refuse what the fixed-shape steps do not do (the loop sampler does all of it)."""
    if decode not in DECODERS:
        raise BlocksftError(f"unknown decode {decode!r}; choose one of {', '.join(DECODERS)}")
    if decode == "loop":
        return
    unsupported = [
        name
        for name, supported in (
            ("temperature > 0", temperature == 0),
            (f"remasking {remasking!r}", remasking == "low_confidence"),
            (f"confidence {confidence!r}", confidence == "float64"),
            ("cfg_scale > 0", cfg_scale == 0),
        )
        if not supported
    ]
    if unsupported:
        raise BlocksftError(
            f"decode={decode!r} decodes at temperature 0 with low_confidence remasking, float64 "
            f"confidence and no guidance; {', '.join(unsupported)} needs decode='loop'"
        )


@dataclass
class SamplerConfig:
    """How to decode: the keyword arguments of :func:`~blocksft.generation.sampler.generate` but the ids."""

    gen_length: int = field(default=256, metadata={"help": "number of tokens to generate"})
    block_length: int = field(default=32, metadata={"help": "tokens per semi-autoregressive block"})
    steps: int = field(default=256, metadata={"help": "denoising steps in all, split evenly over the blocks"})
    temperature: float = field(default=0.0, metadata={"help": "Gumbel-max sampling temperature (0: argmax)"})
    remasking: Literal["low_confidence", "random"] = field(
        default="low_confidence", metadata={"help": "which predictions to commit at each step"}
    )
    confidence: Literal["float64", "llada"] = field(
        default="float64",
        metadata={
            "help": "low_confidence's probabilities: float64 (softmax in float64, ties to the left; "
            "Fast-dLLM's; LLaDA's generate.py in fp32 but at exact ties) or llada (generate.py exactly "
            "in any dtype: softmax in the logits' dtype, bf16 on GPUs, commits chosen by torch.topk)"
        },
    )
    cfg_scale: float = field(default=0.0, metadata={"help": "classifier-free guidance scale (0: off)"})
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "also commit every prediction above this probability (Fast-dLLM parallel decoding)"
        },
    )
    cache: Literal["prefix", "dual"] | None = field(
        default=None, metadata={"help": "key/value cache per block (approximate; see README)"}
    )
    cache_refresh: int | None = field(
        default=None,
        metadata={"help": "recompute the whole cache every N steps of a block (none: at block start)"},
    )
    min_new_tokens: int = field(default=0, metadata={"help": "no EOS/EoT among the first N generated tokens"})
    stop_at_eos: bool = field(
        default=False, metadata={"help": "stop a row after the block in which it produced EOS/EoT"}
    )
    defer_eos: bool = field(
        default=False, metadata={"help": "commit EOS/EoT predictions only after a block's other predictions"}
    )
    decode: Literal["loop", "static", "graph", "compiled"] = field(
        default="loop",
        metadata={
            "help": "loop (rows of a batch share each block), static (fixed-shape steps, each row moving "
            "to its next block as soon as it finishes one; same tokens), graph (those steps captured "
            "in CUDA graphs on CUDA) or compiled (compiled with torch.compile first); not loop: "
            "temperature 0, low_confidence, float64 confidence, no guidance"
        },
    )

    def __post_init__(self):
        # eos ids come from the tokenizer at run time; assume they exist for the check here.
        check_sampler_options(**self.generate_kwargs(), eos_token_ids=(0,))

    def generate_kwargs(self) -> dict:
        """The fields as keyword arguments for :func:`blocksft.generation.sampler.generate`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SamplerConfig)}
