"""Tokenizers: LLaDA's chat template, loading a checkpoint's tokenizer, and small LLaDA-style ones.

The real LLaDA-8B-Instruct tokenizer is loaded from the hub or a folder (:func:`load_tokenizer`).
Tests and the demo cannot download it, so :func:`build_tokenizer` trains a small byte-level BPE with
the same special tokens (:mod:`blocksft.special_tokens`), roles and chat template, so that every
code path (chat rendering, header stripping, ``prompt_len``) runs unchanged on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from blocksft.errors import BlocksftError
from blocksft.special_tokens import BOS, END_HEADER, EOS, EOT, MASK, SPECIAL_TOKENS, START_HEADER

# LLaDA-8B-Instruct ships the early Llama-3 template: the assistant header is appended
# unconditionally, whatever add_generation_prompt says (348 characters, as published).
LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)
ASSISTANT_HEADER = f"{START_HEADER}assistant{END_HEADER}\n\n"  # 47 characters

# A little text so that the default tiny tokenizer learns some merges; any text still encodes
# (byte-level), so tests may feed it anything.
_DEFAULT_CORPUS = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.",
    "### Instruction:\nNatalia sold clips to 48 of her friends in April, and then she sold half "
    "as many clips in May. How many clips did Natalia sell altogether in April and May?",
    "### Response: Let's think step by step.",
    "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.\n#### 72",
    "The answer is: 72",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn? The total is \\boxed{10}.",
)


def build_tokenizer(
    corpus: Iterable[str] = _DEFAULT_CORPUS,
    vocab_size: int = 512,
    *,
    model_max_length: int = 4096,
    split_digits: bool = True,
):
    """Train a byte-level BPE with LLaDA's special tokens and chat template.

    Digits are split into single tokens by default (numbers generalise better that way);
    ``split_digits=False`` lets BPE merge frequent numbers into whole tokens (the demo task's small
    numbers then cost one token each, which a tiny model learns to add far sooner). The special
    tokens take ids 0..5 in the order BOS, EOS, mask, start-header, end-header, EoT; EOS doubles
    as the pad token, as in LLaDA, and plain encoding prepends BOS. Training is deterministic
    for a given corpus and vocab size.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    backend = Tokenizer(models.BPE())
    digits = [pre_tokenizers.Digits(individual_digits=True)] if split_digits else []
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.pre_tokenizer = pre_tokenizers.Sequence([*digits, byte_level])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus), trainer=trainer)
    # Like LLaDA's tokenizer, plain encoding prepends BOS; rendered chat templates already hold
    # one, so they must be encoded with add_special_tokens=False.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        mask_token=MASK,
        additional_special_tokens=[START_HEADER, END_HEADER, EOT],
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = LLADA_CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, flag: str = "--model"):
    """Load a checkpoint's tokenizer (hub id or folder); a failure is one clear ``BlocksftError``.

    Lives here rather than beside the model loader so that commands needing only a tokenizer
    (``prepare``) do not import the model classes.
    """
    check_model_source(name_or_path, flag=flag)
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as err:  # hub, file and tokenizer-class errors alike
        raise source_error("the tokenizer of", name_or_path, err, flag=flag) from err


def check_model_source(name_or_path: str, *, flag: str = "--model") -> None:
    """Refuse a local-looking path (``/x``, ``./x``, ``~/x``) that is not a folder, before any hub lookup."""
    if name_or_path.startswith((".", "/", "~")) and not Path(name_or_path).expanduser().is_dir():
        raise BlocksftError(f"{flag} {name_or_path}: no such checkpoint folder")


def source_error(what: str, name_or_path: str, err: Exception, *, flag: str = "--model"):
    """A one-line ``BlocksftError`` for a checkpoint or tokenizer that failed to load."""
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return BlocksftError(
        f"cannot load {what} {flag} {name_or_path}: {type(err).__name__}: {first_line}; give a local "
        "checkpoint folder, or a hub id with network access"
    )
