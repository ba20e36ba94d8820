"""Tiny LLaDA models and tokenizers for tests, benchmarks and the demo (no download).

The config uses the published key names with a few layers and a small width; the tokenizer has
LLaDA's special tokens, roles and chat template (see :mod:`blocksft.tokenizer`).
"""

from __future__ import annotations

import torch

from blocksft.model import LLaDAConfig, LLaDAModelLM
from blocksft.special_tokens import MASK
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
    values = dict(
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=4,
        mlp_hidden_size=128,
        mlp_ratio=4,
        max_sequence_length=1024,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        vocab_size=512,
        embedding_size=512,
        mask_token_id=2,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        # Keys of the published config that only the original training code reads.
        activation_type="silu",
        block_type="llama",
        layer_norm_type="rms",
        alibi=False,
        rope=True,
        weight_tying=False,
        include_bias=False,
    )
    if tokenizer is not None:
        values.update(
            vocab_size=len(tokenizer),
            embedding_size=len(tokenizer),
            mask_token_id=tokenizer.convert_tokens_to_ids(MASK),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    values.update(overrides)
    return LLaDAConfig(**values)


def tiny_llada_model(tokenizer=None, seed: int = 0, **overrides):
    """A tiny randomly initialised :class:`LLaDAModelLM` in float32, in eval mode."""
    config = tiny_llada_config(tokenizer, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LLaDAModelLM(config)
    return model.eval()
