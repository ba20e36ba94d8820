"""Special tokens: the mask, pad, EOS and end-of-turn ids every command uses, resolved and checked here.

Every command that needs these ids (train, generate, eval, the lm-evaluation-harness model,
prepare, the benchmarks) gets them from :func:`resolve_special_ids`, or from the single rules below
it: the pad id falls back to EOS (:func:`pad_token_id`), the mask id comes from ``--mask-id`` or the
model config and is checked against the vocabulary, the pad id and the tokenizer
(:func:`resolve_mask_id`), and an answer ends at EOS or the end-of-turn token
(:func:`stop_token_ids`).

A model family names the special tokens its tokenizer holds by text (:class:`TokenNames`); LLaDA's
are the default. The texts that a tokenizer would read as control tokens are found by
:func:`special_text_pattern` (data is text: a question that mentions ``<|eot_id|>`` must not end a
turn). Nothing here imports torch or transformers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from blocksft.errors import BlocksftError

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MASK = "<|mdm_mask|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = (BOS, EOS, MASK, START_HEADER, END_HEADER, EOT)

# Token ids of the real LLaDA-8B-Instruct tokenizer.
LLADA_8B_TOKEN_IDS = {
    BOS: 126080,
    EOS: 126081,
    MASK: 126336,
    START_HEADER: 126346,
    END_HEADER: 126347,
    EOT: 126348,
}
LLADA_8B_MASK_ID = 126336


@dataclass(frozen=True)
class TokenNames:
    """The special tokens a family's tokenizer holds by text, beyond its bos/eos/pad attributes.

    Attributes:
        mask: the mask token (LLaDA's tokenizer does not set ``mask_token``; one that does is read
            as well).
        end_of_turn: the token that closes a chat turn, which ends an answer like EOS.
    """

    mask: str = MASK
    end_of_turn: str = EOT


LLADA_TOKENS = TokenNames()


@dataclass(frozen=True)
class SpecialIds:
    """The ids a command decodes or trains with.

    Attributes:
        mask: the mask token, checked (:func:`resolve_mask_id`).
        pad: what pads batches (:func:`pad_token_id`).
        stops: the ids that end an answer (:func:`stop_token_ids`), EOS first.
    """

    mask: int
    pad: int
    stops: tuple[int, ...]


def token_id(tokenizer, token: str | None) -> int | None:
    """The id of ``token`` in ``tokenizer``, or None when it is not a token of it."""
    if not token:
        return None
    found = tokenizer.convert_tokens_to_ids(token)
    if found is None or (tokenizer.unk_token_id is not None and found == tokenizer.unk_token_id):
        return None
    return int(found)


def mask_token_id(tokenizer, names: TokenNames = LLADA_TOKENS) -> int:
    """The id of ``tokenizer``'s mask token: ``names.mask`` (``<|mdm_mask|>``), else its
    ``mask_token`` (Dream's ``<|mask|>``).

    Raises:
        ValueError: the tokenizer has neither.
    """
    for token in (names.mask, getattr(tokenizer, "mask_token", None)):
        found = token_id(tokenizer, token)
        if found is not None:
            return found
    raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no mask token {names.mask}")


def tokenizer_mask_id(tokenizer, names: TokenNames = LLADA_TOKENS) -> int | None:
    """:func:`mask_token_id`, or None when the tokenizer has no mask token."""
    try:
        return mask_token_id(tokenizer, names)
    except ValueError:
        return None


def require_mask_token(tokenizer, flag: str, source: str, names: TokenNames = LLADA_TOKENS) -> None:
    """Refuse a tokenizer without a mask token: it is not a masked diffusion model's."""
    if tokenizer_mask_id(tokenizer, names) is None:
        raise BlocksftError(
            f"{flag} {source}: its tokenizer has no mask token {names.mask} (nor a mask_token), so it is not "
            "the tokenizer of a masked diffusion model; give the model you will train (e.g. "
            "GSAI-ML/LLaDA-8B-Instruct)"
        )


def pad_token_id(tokenizer, model_config=None) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS (as LLaDA pads), else the
    model config's ``pad_token_id`` (``tokenizer`` None: the config's alone).

    Raises:
        BlocksftError: none of them is set.
    """
    candidates = (
        getattr(tokenizer, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
        getattr(model_config, "pad_token_id", None),
    )
    for candidate in candidates:
        if candidate is not None:
            return int(candidate)
    raise BlocksftError("the tokenizer has neither a pad nor an EOS token: cannot pad batches")


def stop_token_ids(tokenizer, names: TokenNames = LLADA_TOKENS) -> tuple[int, ...]:
    """The ids that end an answer: the tokenizer's EOS and end-of-turn token when it has them.

    For LLaDA-8B-Instruct that is ``(126081, 126348)``.
    """
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    end_of_turn = token_id(tokenizer, names.end_of_turn)
    if end_of_turn is not None and end_of_turn not in ids:
        ids.append(end_of_turn)
    return tuple(ids)


def check_in_vocabulary(token: int, model_config, what: str) -> None:
    """Refuse an id outside the model's vocabulary (``[0, vocab_size)``; no check without one)."""
    vocab = getattr(model_config, "vocab_size", None)
    if vocab is not None and not 0 <= token < vocab:
        raise BlocksftError(f"{what} is outside the model's vocabulary [0, {vocab})")


def resolve_mask_id(
    model_config,
    tokenizer,
    override: int | None = None,
    *,
    pad_id: int | None = None,
    names: TokenNames = LLADA_TOKENS,
) -> int:
    """The mask id: ``override`` (``--mask-id``), else the model config's ``mask_token_id``, checked
    against the vocabulary, the tokenizer's mask token and the padding id.

    A tokenizer without a mask token is accepted only with an explicit ``override``: the config's id
    may then be an ordinary token of it. ``tokenizer`` None (a random model without one, as in the
    benchmarks): the config's id, checked against the vocabulary and the padding id.

    Raises:
        BlocksftError: naming the mismatch and the fix.
    """
    from_tokenizer = None if tokenizer is None else tokenizer_mask_id(tokenizer, names)
    from_config = getattr(model_config, "mask_token_id", None)
    mask_id = override if override is not None else from_config
    what = f"--mask-id {mask_id}" if override is not None else f"the model config's mask_token_id {mask_id}"
    if mask_id is None:
        if from_tokenizer is None:
            raise BlocksftError(
                "neither the model config nor the tokenizer names a mask token: pass --mask-id"
            )
        mask_id, what = from_tokenizer, f"the tokenizer's {names.mask} id {from_tokenizer}"
    check_in_vocabulary(mask_id, model_config, what)
    if pad_id is not None and mask_id == pad_id:
        raise BlocksftError(f"{what} equals the padding id: masks and padding must differ")
    if tokenizer is None:
        return int(mask_id)
    if from_tokenizer is None and override is None:
        raise BlocksftError(
            f"tokenizer {tokenizer.name_or_path!r} has no mask token {names.mask}, so {what} may be an "
            f"ordinary token of it: use the model's own tokenizer, or pass --mask-id {mask_id} if that id "
            "is its mask"
        )
    if from_tokenizer is not None and from_tokenizer != mask_id:
        raise BlocksftError(
            f"{what} differs from the tokenizer's {names.mask} id {from_tokenizer}: check that model and "
            f"tokenizer belong together, or pass --mask-id {from_tokenizer}"
        )
    return int(mask_id)


def resolve_special_ids(
    tokenizer, model_config, *, mask_id: int | None = None, names: TokenNames = LLADA_TOKENS
) -> SpecialIds:
    """The mask, pad and stop ids of a model and its tokenizer, every check applied.

    Args:
        tokenizer: the model's tokenizer, or None for a random model without one (the benchmarks):
            then every id is the model config's.
        model_config: the model's config (``vocab_size``, ``mask_token_id``, ``pad_token_id``).
        mask_id: ``--mask-id``, when given.
        names: the family's special-token texts.
    """
    pad = pad_token_id(tokenizer, model_config)
    mask = resolve_mask_id(model_config, tokenizer, mask_id, pad_id=pad, names=names)
    if tokenizer is not None:
        stops = stop_token_ids(tokenizer, names)
    else:
        eos = getattr(model_config, "eos_token_id", None)
        stops = () if eos is None else (int(eos),)
    return SpecialIds(mask, pad, stops)


def special_token_texts(tokenizer) -> list[str]:
    """The texts that ``tokenizer`` encodes as control tokens: its special and added special tokens."""
    texts = {str(t) for t in getattr(tokenizer, "all_special_tokens", ())}
    texts |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    return sorted(t for t in texts if t)


def special_text_pattern(tokenizer) -> re.Pattern:
    """A compiled regex that finds the texts ``tokenizer`` would encode as control tokens.

    One alternation, longest first, so that checking a dataset's rows costs one scan each.
    """
    texts = sorted(special_token_texts(tokenizer), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, texts)) if texts else r"(?!)")


def special_text_problem(fields: dict[str, str], special_text) -> str:
    """Why a row cannot be encoded as text (``""`` if it can): a field holds a special token's text.

    Args:
        fields: field name -> text of one row.
        special_text: :func:`special_text_pattern` of the tokenizer.
    """
    for name, text in fields.items():
        found = special_text.search(text)
        if found:
            return (
                f"field {name!r} holds {found.group(0)!r}, which the tokenizer would encode as a control "
                "token rather than as text"
            )
    return ""
