"""From generated rows to text: stop tokens, answers cut at the first EOS/EoT, canvases for streaming.

Shared by ``blocksft generate`` and the evaluation runner so that both read answers the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from blocksft.errors import BlocksftError
from blocksft.tokenizer import EOT, mask_token_id

MASK_GLYPH = "░"


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """The ids that end an answer: the tokenizer's EOS and ``<|eot_id|>`` when it has them.

    For LLaDA-8B-Instruct that is ``(126081, 126348)``.
    """
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    eot = tokenizer.convert_tokens_to_ids(EOT)
    if eot is not None and eot != tokenizer.unk_token_id and eot not in ids:
        ids.append(int(eot))
    return tuple(ids)


def cut_at_stop(ids: Sequence[int], stop_ids: Iterable[int]) -> list[int]:
    """``ids`` up to (not including) the first stop id."""
    stops = set(stop_ids)
    ids = [int(i) for i in ids]
    for pos, token in enumerate(ids):
        if token in stops:
            return ids[:pos]
    return ids


def decode_answer(tokenizer, sequences, prompt_len: int, stop_ids: Iterable[int] | None = None) -> list[str]:
    """Decode each row's generated part, cut at its first EOS/EoT, without special tokens.

    Args:
        tokenizer: the model's tokenizer.
        sequences: ``[B, P + G]`` ids (``GenerateOutput.sequences``) or a list of id lists.
        prompt_len: ``P``, the (padded) prompt width (``GenerateOutput.prompt_length``).
        stop_ids: ids that end an answer; default :func:`stop_token_ids`.

    Returns:
        One string per row.
    """
    stops = tuple(stop_token_ids(tokenizer) if stop_ids is None else stop_ids)
    rows = sequences.tolist() if hasattr(sequences, "tolist") else sequences
    return [tokenizer.decode(cut_at_stop(row[prompt_len:], stops), skip_special_tokens=True) for row in rows]


def render_canvas(tokenizer, ids: Sequence[int], mask_id: int, glyph: str = MASK_GLYPH) -> str:
    """Text of a partly decoded row: runs of committed tokens decoded, each mask shown as ``glyph``."""
    parts, run = [], []
    for token in ids:
        token = int(token)
        if token == mask_id:
            if run:
                parts.append(tokenizer.decode(run, skip_special_tokens=False))
                run = []
            parts.append(glyph)
        else:
            run.append(token)
    if run:
        parts.append(tokenizer.decode(run, skip_special_tokens=False))
    return "".join(parts)


def tokenizer_pad_id(tokenizer) -> int | None:
    """The id that pads prompts: the tokenizer's pad token, else EOS (as LLaDA pads)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def resolve_mask_id(
    model_config, tokenizer, override: int | None = None, *, pad_id: int | None = None
) -> int:
    """The mask id: ``override`` (``--mask-id``), else the model config's ``mask_token_id``, checked
    against the vocabulary, the tokenizer's mask token and the padding id.

    A tokenizer without a mask token is accepted only with an explicit ``override``: the config's id
    may then be an ordinary token of it.

    Raises:
        BlocksftError: naming the mismatch and the fix.
    """
    from blocksft.tokenizer import MASK

    try:
        from_tokenizer = mask_token_id(tokenizer)
    except ValueError:
        from_tokenizer = None
    from_config = getattr(model_config, "mask_token_id", None)
    mask_id = override if override is not None else from_config
    what = f"--mask-id {mask_id}" if override is not None else f"the model config's mask_token_id {mask_id}"
    if mask_id is None:
        if from_tokenizer is None:
            raise BlocksftError(
                "neither the model config nor the tokenizer names a mask token: pass --mask-id"
            )
        mask_id, what = from_tokenizer, f"the tokenizer's {MASK} id {from_tokenizer}"
    vocab = getattr(model_config, "vocab_size", None)
    if vocab is not None and not 0 <= mask_id < vocab:
        raise BlocksftError(f"{what} is outside the model's vocabulary [0, {vocab})")
    if pad_id is not None and mask_id == pad_id:
        raise BlocksftError(f"{what} equals the padding id: masks and padding must differ")
    if from_tokenizer is None and override is None:
        raise BlocksftError(
            f"tokenizer {tokenizer.name_or_path!r} has no mask token {MASK}, so {what} may be an ordinary "
            f"token of it: use the model's own tokenizer, or pass --mask-id {mask_id} if that id is its mask"
        )
    if from_tokenizer is not None and from_tokenizer != mask_id:
        raise BlocksftError(
            f"{what} differs from the tokenizer's {MASK} id {from_tokenizer}: check that model and tokenizer "
            f"belong together, or pass --mask-id {from_tokenizer}"
        )
    return int(mask_id)


def encode_prompt(tokenizer, text: str, *, chat: bool = False) -> list[int]:
    """Prompt ids: the raw text (with the BOS that plain encoding adds, as LLaDA's tokenizer does), or
    with ``chat`` the text as one user turn of the chat template followed by the assistant header,
    encoded without adding a second BOS."""
    if not chat:
        return list(tokenizer(text)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise BlocksftError(f"tokenizer {tokenizer.name_or_path!r} has no chat template: drop --chat")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
