"""Shared fixtures: the tiny LLaDA-style tokenizer and a tiny random LLaDA model (CPU, no download)."""

import pytest
import torch

from blocksft.testing import tiny_llada_model, tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return tiny_llada_model(tokenizer, seed=0)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer):
    """The tiny random model and its tokenizer saved as a checkpoint folder (a path string)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llada"
    tiny_llada_model(tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
