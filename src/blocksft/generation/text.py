"""Between text and ids: prompts encoded, answers cut at the first EOS/EoT, canvases for streaming.

Shared by ``blocksft generate`` and the evaluation runner so that both read answers the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from blocksft.errors import BlocksftError
from blocksft.special_tokens import stop_token_ids

MASK_GLYPH = "░"


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
        stop_ids: ids that end an answer; default
            :func:`~blocksft.special_tokens.stop_token_ids`.

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
