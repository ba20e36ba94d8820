"""Tiny LLaDA models and tokenizers for tests, benchmarks and the demo (no download).

The config uses the published key names with a few layers and a small width; the tokenizer has
LLaDA's special tokens, roles and chat template (see :mod:`blocksft.tokenizer`).
"""

from __future__ import annotations

from blocksft.families.llada import LLADA
from blocksft.tokenizer import build_tokenizer


def tiny_tokenizer(corpus=None, vocab_size: int = 512):
    """A small byte-level BPE with LLaDA's special tokens and chat template."""
    return (
        build_tokenizer(corpus, vocab_size) if corpus is not None else build_tokenizer(vocab_size=vocab_size)
    )


def tiny_llada_config(tokenizer=None, **overrides):
    """A tiny random-model config with the published LLaDA keys.

    With a tokenizer, vocab size and special ids come from it; ``overrides`` win over everything.
    """
    return LLADA.tiny_config(tokenizer, **overrides)


def tiny_llada_model(tokenizer=None, seed: int = 0, **overrides):
    """A tiny randomly initialised :class:`LLaDAModelLM` in float32, in eval mode."""
    return LLADA.random_model(tiny_llada_config(tokenizer, **overrides), seed)
