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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny models gain nothing from threads, and on a busy 2-core
    machine two threads run 50x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
