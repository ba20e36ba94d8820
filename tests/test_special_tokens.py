"""The special ids every command uses come from one place: the pad fallback, the mask checks, the stops."""

from types import SimpleNamespace

import pytest

from blocksft.errors import BlocksftError
from blocksft.special_tokens import (
    LLADA_TOKENS,
    TokenNames,
    pad_token_id,
    resolve_special_ids,
    stop_token_ids,
)

MASK, EOS, EOT = 2, 1, 5  # ids of the tiny tokenizer


def config(**ids):
    return SimpleNamespace(vocab_size=512, **{"mask_token_id": MASK, "pad_token_id": EOS, **ids})


def test_the_pad_id_falls_back_from_the_tokenizers_pad_to_its_eos_to_the_model_config():
    tokenizer = SimpleNamespace(pad_token_id=7, eos_token_id=EOS)
    assert pad_token_id(tokenizer, config()) == 7
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=EOS), config(pad_token_id=9)) == EOS
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None), config(pad_token_id=9)) == 9
    assert pad_token_id(None, config(pad_token_id=9)) == 9  # a random model without a tokenizer
    with pytest.raises(BlocksftError, match="neither a pad nor an EOS token"):
        pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None), config(pad_token_id=None))


def test_every_command_gets_the_same_checked_ids(tokenizer):
    ids = resolve_special_ids(tokenizer, config())
    assert (ids.mask, ids.pad, ids.stops) == (MASK, EOS, (EOS, EOT))
    assert resolve_special_ids(tokenizer, config(mask_token_id=None)).mask == MASK  # the tokenizer's
    with pytest.raises(BlocksftError, match="--mask-id 7 differs from the tokenizer's"):
        resolve_special_ids(tokenizer, config(), mask_id=7)
    with pytest.raises(BlocksftError, match="--mask-id 1 equals the padding id"):
        resolve_special_ids(tokenizer, config(), mask_id=1)
    with pytest.raises(BlocksftError, match="--mask-id 600 is outside the model's vocabulary"):
        resolve_special_ids(tokenizer, config(), mask_id=600)


def test_a_random_model_without_a_tokenizer_uses_its_configs_ids():
    ids = resolve_special_ids(None, config(eos_token_id=EOS))
    assert (ids.mask, ids.pad, ids.stops) == (MASK, EOS, (EOS,))
    with pytest.raises(BlocksftError, match="mask_token_id 1 equals the padding id"):
        resolve_special_ids(None, config(mask_token_id=EOS))


def test_a_family_names_its_own_end_of_turn(tokenizer):
    assert stop_token_ids(tokenizer) == stop_token_ids(tokenizer, LLADA_TOKENS) == (EOS, EOT)
    # A family whose end of turn the tokenizer lacks stops at EOS alone.
    assert stop_token_ids(tokenizer, TokenNames(end_of_turn="<|im_end|>")) == (EOS,)
