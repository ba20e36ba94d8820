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
