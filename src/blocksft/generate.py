"""Semi-autoregressive block decoding (LLaDA's sampler) with optional Fast-dLLM caches and threshold.

Usage::

    from blocksft.generate import decode_answer, generate, left_pad, stop_token_ids

    ids, mask = left_pad([tokenizer(p)["input_ids"] for p in prompts], pad_id=tokenizer.eos_token_id)
    out = generate(model, ids, attention_mask=mask, gen_length=256, block_length=32, steps=256,
                   mask_id=126336, eos_token_ids=stop_token_ids(tokenizer))
    answers = decode_answer(tokenizer, out.sequences, out.prompt_length)

The implementation lives in :mod:`blocksft.generation` (``schedule``: pure pieces; ``sampler``: the
loop; ``text``: answers and streaming text; ``options``: the knobs as a dataclass).
"""

from blocksft.generation.options import SamplerConfig, check_sampler_options
from blocksft.generation.sampler import GenerateOutput, GenerateStep, generate
from blocksft.generation.schedule import (
    left_pad,
    positions_from_mask,
    predict_block,
    sample_tokens,
    select_transfer,
    token_confidence,
    transfer_schedule,
)
from blocksft.generation.text import cut_at_stop, decode_answer, render_canvas, stop_token_ids

__all__ = [
    "GenerateOutput",
    "GenerateStep",
    "SamplerConfig",
    "check_sampler_options",
    "cut_at_stop",
    "decode_answer",
    "generate",
    "left_pad",
    "positions_from_mask",
    "predict_block",
    "render_canvas",
    "sample_tokens",
    "select_transfer",
    "stop_token_ids",
    "token_confidence",
    "transfer_schedule",
]
