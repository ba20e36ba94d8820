"""Prompt text and chat rendering, shared by preprocessing, training and evaluation.

A query is wrapped in a prompt template (the reference's Alpaca wrapper by default) and sent as the
single user message of the model's own chat template. Two renders matter:

* the **prompt**: the user-only conversation with the generation prompt, so it ends with the
  assistant header; its token count is ``prompt_len``, and evaluation feeds exactly these ids to the
  sampler (:func:`render_prompt_ids`);
* the **conversation**: [user, assistant]. LLaDA's template appends the assistant header after
  every conversation, whatever ``add_generation_prompt`` says; the reference cuts the last 47
  characters blindly. Here :func:`chat_template_appends_header` classifies the template once and
  :func:`strip_assistant_header` removes the header only after checking that it is there, so the
  answer span ends with ``<|eot_id|>``. A template that honours ``add_generation_prompt`` is used as
  is; one that ends conversations with anything else is an error.

Rendering is always ``apply_chat_template(..., tokenize=False)`` followed by encoding with
``add_special_tokens=False`` (the render already holds BOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from blocksft.config.prepare import ALPACA_PROMPT
from blocksft.errors import BlocksftError
from blocksft.tokenizer import ASSISTANT_HEADER

QUERY_SLOT = "{query}"

# Messages used only to find out how a chat template ends a conversation.
_PROBE_USER = "Probe question?"
_PROBE_ANSWER = "Probe answer."
_PROBE_NEXT_USER = "Next probe question?"


def load_prompt_template(value: str) -> str:
    """Return a prompt template given as text with ``{query}``, or as a path to a text file holding one.

    One trailing newline of a file is dropped (editors add it; the template did not mean it).

    Raises:
        BlocksftError: neither text with ``{query}`` nor a readable file with it.
    """
    if QUERY_SLOT in value:
        return value
    path = Path(value)
    if not path.is_file():
        raise BlocksftError(
            f"--prompt-template {value!r} has no {QUERY_SLOT} slot and is not a file; give the template "
            f"text with {QUERY_SLOT} where the question goes, or a path to a text file holding it"
        )
    try:
        text = path.read_text(encoding="utf-8").removesuffix("\n")
    except UnicodeDecodeError as err:
        raise BlocksftError(
            f"--prompt-template file {path} is not UTF-8 text (byte {err.start}); re-encode it as UTF-8"
        ) from err
    except OSError as err:
        raise BlocksftError(f"--prompt-template file {path} cannot be read: {err}") from err
    if QUERY_SLOT not in text:
        raise BlocksftError(
            f"--prompt-template file {path} has no {QUERY_SLOT} slot; add it where the question goes"
        )
    return text


def fill_prompt(template: str, query: str) -> str:
    """The user message: ``template`` with every ``{query}`` replaced by ``query``.

    Plain replacement rather than ``str.format``: templates and queries are full of LaTeX braces.
    """
    return template.replace(QUERY_SLOT, query)


def _user(template: str, query: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": fill_prompt(template, query)}]


def _exchange(template: str, query: str, response: str) -> list[dict[str, str]]:
    return _user(template, query) + [{"role": "assistant", "content": response}]


def _model_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def _render(
    tokenizer, conversations: list[list[dict[str, str]]], *, add_generation_prompt: bool
) -> list[str]:
    if not conversations:
        return []
    if not getattr(tokenizer, "chat_template", None):
        raise BlocksftError(
            f"tokenizer {_model_name(tokenizer)!r} has no chat template; use a chat model's tokenizer "
            "(e.g. GSAI-ML/LLaDA-8B-Instruct) or set tokenizer.chat_template"
        )
    try:
        texts = tokenizer.apply_chat_template(
            conversations, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as err:  # jinja2 raises TemplateError and friends from inside the template
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise BlocksftError(
            f"the chat template of {_model_name(tokenizer)!r} failed to render: "
            f"{type(err).__name__}: {first_line}"
        ) from err
    return list(texts)


def chat_template_appends_header(tokenizer) -> bool:
    """Whether the tokenizer's chat template appends the assistant header after every conversation.

    Renders [user, assistant] (``X``) and [user, assistant, user] (``Y``) for a probe exchange. A
    template that ends a conversation at the end of its last message renders ``X`` as a prefix of
    ``Y``: it is used as is (``False``). LLaDA's renders ``X`` = that prefix + the assistant header
    (``True``: strip it). Anything else is an error.

    Raises:
        BlocksftError: no chat template, or the template ends conversations with something else.
    """
    exchange = _exchange("{query}", _PROBE_USER, _PROBE_ANSWER)
    (closed,) = _render(tokenizer, [exchange], add_generation_prompt=False)
    try:
        (continued,) = _render(
            tokenizer,
            [exchange + [{"role": "user", "content": _PROBE_NEXT_USER}]],
            add_generation_prompt=False,
        )
    except BlocksftError:
        # Templates that refuse a third message: trust the suffix alone.
        return closed.endswith(ASSISTANT_HEADER)
    if continued.startswith(closed):
        return False
    if closed.endswith(ASSISTANT_HEADER) and continued.startswith(closed[: -len(ASSISTANT_HEADER)]):
        return True
    common = 0
    while common < min(len(closed), len(continued)) and closed[common] == continued[common]:
        common += 1
    raise BlocksftError(
        f"the chat template of {_model_name(tokenizer)!r} ends a conversation with "
        f"{closed[common:]!r}, which is neither the end of the last message nor the assistant header "
        f"{ASSISTANT_HEADER!r}; training data would teach the model to emit it. Use a tokenizer whose "
        "template ends the conversation after the last message (or appends exactly that header)"
    )


def strip_assistant_header(
    text: str, appends_header: bool, *, where: str = "the rendered conversation"
) -> str:
    """Remove the trailing assistant header from a rendered [user, assistant] conversation.

    Args:
        text: the render.
        appends_header: what :func:`chat_template_appends_header` said about the template; when
            ``False`` the render is returned unchanged.
        where: names the row in the error message.

    Raises:
        BlocksftError: the template appends the header but this render does not end with it.
    """
    if not appends_header:
        return text
    if not text.endswith(ASSISTANT_HEADER):
        raise BlocksftError(
            f"{where} ends with {text[-len(ASSISTANT_HEADER) :]!r}, not the assistant header "
            f"{ASSISTANT_HEADER!r} that this chat template appends; the template does not end as expected"
        )
    return text[: -len(ASSISTANT_HEADER)]


def render_prompt_texts(tokenizer, queries: Sequence[str], template: str = ALPACA_PROMPT) -> list[str]:
    """User-only chat renders (ending with the assistant header) for a batch of queries."""
    return _render(tokenizer, [_user(template, q) for q in queries], add_generation_prompt=True)


def render_conversation_texts(
    tokenizer,
    queries: Sequence[str],
    responses: Sequence[str],
    template: str = ALPACA_PROMPT,
    *,
    appends_header: bool | None = None,
) -> list[str]:
    """[user, assistant] chat renders with the trailing header removed (checked), for a batch.

    Args:
        appends_header: the result of :func:`chat_template_appends_header` when already known
            (it is computed otherwise).
    """
    if appends_header is None:
        appends_header = chat_template_appends_header(tokenizer)
    texts = _render(
        tokenizer,
        [_exchange(template, q, r) for q, r in zip(queries, responses)],
        add_generation_prompt=False,
    )
    return [
        strip_assistant_header(t, appends_header, where=f"the rendered conversation of query {q[:40]!r}")
        for t, q in zip(texts, queries)
    ]


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered texts, without adding special tokens, in one batched call.

    Fast tokenizers go straight to their Rust backend's ``encode_batch_fast`` (no offsets), which
    gives the same ids as ``tokenizer(texts, add_special_tokens=False)`` at a fraction of the cost.
    """
    texts = list(texts)
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if (
        backend is not None
        and hasattr(backend, "encode_batch_fast")
        and not getattr(tokenizer, "split_special_tokens", False)
    ):
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def render_prompt_ids(tokenizer, query: str, template: str = ALPACA_PROMPT) -> list[int]:
    """Token ids of the user-only chat render of ``query``: exactly the prompt part of training records.

    Args:
        tokenizer: a chat tokenizer (``apply_chat_template``).
        query: the question.
        template: prompt template with ``{query}`` (default: the reference's Alpaca wrapper).

    Returns:
        The ids, ending with the assistant header's tokens.
    """
    return encode_texts(tokenizer, render_prompt_texts(tokenizer, [query], template))[0]
