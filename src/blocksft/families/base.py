"""What a model family is: the facts every command needs about one kind of checkpoint.

A :class:`ModelFamily` names its model class (and through it the config class, the Auto classes
and the logits shift), the special tokens by text, the chat template's generation prompt, the
transformer layers' linear modules (LoRA targets), the published parameter layout, the shape
numbers that memory and FLOP estimates read, and builders of tiny configs and tokenizers for tests,
benchmarks and the demo. Each family is one file beside this one; :mod:`blocksft.families` finds
the family of a config, a model or a tokenizer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch

from blocksft.special_tokens import TokenNames
from blocksft.tokenizer import DEFAULT_CORPUS, TokenizerSpec, train_tokenizer

# The reference training script names Llama's seven layers; on LLaDA PEFT finds four of them, so the
# paper's runs adapted these. A family's ``reference`` preset is these four where its layers have
# them: the modules the paper trained, also on Dream, whose Qwen2 names would let the script's list
# match all seven (that is ``all`` there).
PAPER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj")


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The numbers of a model's shape that memory and FLOP estimates and the benchmarks need.

    Attributes:
        n_layers: transformer layers.
        d_model: hidden width.
        n_heads, n_kv_heads: query heads and key/value heads.
        mlp_hidden: the SwiGLU MLP's width.
        vocab_rows: rows of the embedding and the LM head (at least the vocabulary).
    """

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden: int
    vocab_rows: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One model family (LLaDA, Dream, ...): see the module docstring.

    Attributes:
        name: lower-case name, as ``--family`` takes it (``llada``, ``dream``).
        title: the name as prose writes it (``LLaDA``, ``Dream``).
        model_class: our implementation; it names ``config_class``, ``logits_shift`` (the output
            at position i predicts token i + shift) and ``auto_classes``.
        modeling_files: the files of :mod:`blocksft.model` a checkpoint carries so that plain
            transformers loads it with ``trust_remote_code=True`` (config file first).
        tokens: the special tokens' texts beyond the tokenizer's eos/pad attributes.
        tokenizer_spec: how to train a small tokenizer like the family's own.
        assistant_header: the chat template's generation prompt (what ends a user-only render).
        layer_prefix: a regex of the module-name prefix of a transformer layer's linear modules
            (LoRA targets are matched after it, so that an LM head sharing a name is never one).
        linear_layers: every linear module name inside a layer (the ``all`` LoRA preset).
        shape: the :class:`ModelShape` of a config.
        parameter_shapes: the published state-dict keys and shapes of a config.
        config_for: a config of a given :class:`ModelShape`, further config keys (special ids,
            ...) as keyword arguments, which win: random models of tests and benchmarks.
        tiny_shape, tiny_values: the shape and the other config keys of the tiny random models of
            tests and the demo.
        init_std_key, max_positions_key: the config keys of the random init's std and of the
            longest sequence the rotary tables cover.
    """

    name: str
    title: str
    model_class: type
    modeling_files: tuple[str, ...]
    tokens: TokenNames
    tokenizer_spec: TokenizerSpec
    assistant_header: str
    layer_prefix: str
    linear_layers: tuple[str, ...]
    shape: Callable[[Any], ModelShape]
    parameter_shapes: Callable[[Any], dict[str, tuple[int, ...]]]
    config_for: Callable[..., Any]
    tiny_shape: ModelShape
    tiny_values: dict
    init_std_key: str
    max_positions_key: str

    @property
    def config_class(self) -> type:
        return self.model_class.config_class

    @property
    def model_type(self) -> str:
        """``model_type`` in a checkpoint's config.json."""
        return self.config_class.model_type

    @property
    def logits_shift(self) -> int:
        return self.model_class.logits_shift

    @property
    def reference_lora_targets(self) -> tuple[str, ...]:
        """The layers the paper's LoRA adapted (on LLaDA) that this family's layers have."""
        return tuple(n for n in PAPER_LORA_TARGETS if n in self.linear_layers)

    @property
    def lora_presets(self) -> dict[str, tuple[str, ...]]:
        return {"reference": self.reference_lora_targets, "all": self.linear_layers}

    def layer_module(self, name: str) -> str | None:
        """The linear module's own name if ``name`` is a module inside a transformer layer, else None."""
        found = re.fullmatch(self.layer_prefix + r"(?P<leaf>[^.]+)", name)
        return found["leaf"] if found else None

    def auto_map(self) -> dict[str, str]:
        """A checkpoint's ``auto_map``: our config and model classes by file and class name."""
        config_file, model_file = (f.removesuffix(".py") for f in self.modeling_files[:2])
        model = f"{model_file}.{self.model_class.__name__}"
        return {"AutoConfig": f"{config_file}.{self.config_class.__name__}"} | {
            auto: model for auto in self.model_class.auto_classes
        }

    def special_ids(self) -> dict[str, int]:
        """The special ids of a tokenizer trained from :attr:`tokenizer_spec`, as config keys."""
        spec = self.tokenizer_spec
        return {
            "mask_token_id": spec.token_id(spec.mask),
            "bos_token_id": spec.token_id(spec.bos or spec.eos),
            "eos_token_id": spec.token_id(spec.eos),
            "pad_token_id": spec.token_id(spec.pad),
        }

    def build_tokenizer(
        self,
        corpus: Iterable[str] = DEFAULT_CORPUS,
        vocab_size: int = 512,
        *,
        model_max_length: int = 4096,
        split_digits: bool = True,
    ):
        """A small byte-level BPE with the family's special tokens and chat template (see
        :func:`blocksft.tokenizer.train_tokenizer`)."""
        return train_tokenizer(
            self.tokenizer_spec,
            corpus,
            vocab_size,
            model_max_length=model_max_length,
            split_digits=split_digits,
        )

    def tiny_config(self, tokenizer=None, shape: ModelShape | None = None, **overrides):
        """A tiny random-model config of ``shape`` (default :attr:`tiny_shape`) and
        :attr:`tiny_values`. With a tokenizer, the vocabulary and the special ids come from it;
        ``overrides`` (config keys) win over everything."""
        shape, ids = shape or self.tiny_shape, self.special_ids()
        if tokenizer is not None:
            shape = dataclasses.replace(shape, vocab_rows=len(tokenizer))
            ids = {
                "mask_token_id": tokenizer.convert_tokens_to_ids(self.tokenizer_spec.mask),
                "bos_token_id": tokenizer.eos_token_id
                if tokenizer.bos_token_id is None
                else tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            }
        return self.config_for(shape, **{**self.tiny_values, **ids, **overrides})

    def random_model(self, config, seed: int = 0):
        """:attr:`model_class` of ``config``, initialised from ``seed`` (the global torch generator
        is left as it was), in eval mode."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.model_class(config)
        return model.eval()
