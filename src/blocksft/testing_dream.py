"""Tiny Dream models and tokenizers for tests, benchmarks and the demo (no download).

The config uses the published Dream key names with a few layers, a small width and grouped
key/value heads; the tokenizer is a small byte-level BPE with Dream's special tokens and its ChatML
chat template (:data:`blocksft.families.dream.DREAM_TOKENIZER`), so that chat rendering, prompt
lengths and special ids run unchanged on it. The same interface as :mod:`blocksft.testing`.
"""

from __future__ import annotations

from collections.abc import Iterable

from blocksft.families.dream import (  # noqa: F401  (re-exported for tests)
    DEFAULT_SYSTEM_PROMPT,
    DREAM,
    DREAM_7B_TOKEN_IDS,
    EOS,
    IM_END,
    IM_START,
    MASK,
)
from blocksft.tokenizer import DEFAULT_CORPUS


def tiny_dream_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512, **options):
    """A small byte-level BPE with Dream's special tokens and ChatML template (ids 0..3: EOS/pad,
    ``<|im_start|>``, ``<|im_end|>``, ``<|mask|>``; no BOS). ``options``: those of
    :func:`blocksft.tokenizer.train_tokenizer`."""
    return DREAM.build_tokenizer(corpus if corpus is not None else DEFAULT_CORPUS, vocab_size, **options)


def tiny_dream_config(tokenizer=None, **overrides):
    """A tiny random-model config with the published Dream keys and grouped key/value heads.

    With a tokenizer, vocab size and special ids come from it; ``overrides`` win over everything.
    """
    return DREAM.tiny_config(tokenizer, **overrides)


def tiny_dream_model(tokenizer=None, seed: int = 0, **overrides):
    """A tiny randomly initialised :class:`DreamModel` in float32, in eval mode."""
    return DREAM.random_model(tiny_dream_config(tokenizer, **overrides), seed)
