"""Tiny Dream models and tokenizers for tests, benchmarks and the demo (no download).

The config uses the published Dream key names with a few layers, a small width and grouped
key/value heads; the tokenizer is a small byte-level BPE with Dream's special tokens and its ChatML
chat template, so that chat rendering, prompt lengths and special ids run unchanged on it.
"""

from __future__ import annotations

from collections.abc import Iterable

EOS = "<|endoftext|>"  # Dream's EOS and pad token (id 151643 in the real tokenizer)
IM_START = "<|im_start|>"  # 151644
IM_END = "<|im_end|>"  # 151645, the end of a turn
MASK = "<|mask|>"  # 151666
SPECIAL_TOKENS = (EOS, IM_START, IM_END, MASK)

# Token ids of the real Dream-v0-7B tokenizer.
DREAM_7B_TOKEN_IDS = {EOS: 151643, IM_START: 151644, IM_END: 151645, MASK: 151666}

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# ChatML as Dream's tokenizer renders it: a default system turn when the conversation has none,
# each message as "<|im_start|>{role}\n{content}<|im_end|>\n", and the assistant header only when
# add_generation_prompt is set.
DREAM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ASSISTANT_HEADER = f"{IM_START}assistant\n"


def tiny_dream_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512):
    """A small byte-level BPE with Dream's special tokens and ChatML template.

    The special tokens take ids 0..3 in the order ``<|endoftext|>`` (EOS and pad, as in Dream),
    ``<|im_start|>``, ``<|im_end|>``, ``<|mask|>``. Digits are split into single tokens and plain
    encoding adds no BOS, as Qwen2's tokenizer does. Training is deterministic for a given corpus
    and vocab size.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from blocksft.tokenizer import _DEFAULT_CORPUS

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus if corpus is not None else _DEFAULT_CORPUS), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=EOS,
        mask_token=MASK,
        additional_special_tokens=[IM_START, IM_END],
    )
    tokenizer.chat_template = DREAM_CHAT_TEMPLATE
    return tokenizer


def tiny_dream_config(tokenizer=None, **overrides):
    """A tiny random-model config with the published Dream keys and grouped key/value heads.

    With a tokenizer, vocab size and special ids come from it; ``overrides`` win over everything.
    """
    from blocksft.model.configuration_dream import DreamConfig

    values = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        vocab_size=512,
        mask_token_id=SPECIAL_TOKENS.index(MASK),
        bos_token_id=SPECIAL_TOKENS.index(EOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        pad_token_id=SPECIAL_TOKENS.index(EOS),
        # Keys of the published config that only the original code reads.
        hidden_act="silu",
        tie_word_embeddings=False,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=2,
        attention_dropout=0.0,
        rope_scaling=None,
    )
    if tokenizer is not None:
        values.update(
            vocab_size=len(tokenizer),
            mask_token_id=tokenizer.convert_tokens_to_ids(MASK),
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    values.update(overrides)
    return DreamConfig(**values)


def tiny_dream_model(tokenizer=None, seed: int = 0, **overrides):
    """A tiny randomly initialised :class:`DreamModel` in float32, in eval mode."""
    import torch

    from blocksft.model.modeling_dream import DreamModel

    config = tiny_dream_config(tokenizer, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DreamModel(config)
    return model.eval()
