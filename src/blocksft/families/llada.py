"""LLaDA (GSAI-ML/LLaDA-8B-Instruct and -Base): the first family.

Unshifted logits (position i predicts token i); special tokens ``<|mdm_mask|>`` 126336, EOS and pad
``<|endoftext|>`` 126081, end of turn ``<|eot_id|>`` 126348, BOS ``<|startoftext|>`` 126080 (their
texts: :mod:`blocksft.special_tokens`); the early Llama-3 chat template, which appends the assistant
header after every conversation (:data:`blocksft.tokenizer.LLADA_CHAT_TEMPLATE`); the OLMo-style
parameter names ``model.transformer.blocks.{i}.{q_proj,...,ff_out}``, where the LM head shares the
name ``ff_out`` with the blocks' MLP output.
"""

from __future__ import annotations

from blocksft.model.configuration_llada import LLaDAConfig
from blocksft.model.modeling_llada import LLaDAModelLM
from blocksft.special_tokens import LLADA_TOKENS
from blocksft.tokenizer import ASSISTANT_HEADER, LLADA_TOKENIZER

from .base import ModelFamily, ModelShape

LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


def shape(config: LLaDAConfig) -> ModelShape:
    return ModelShape(
        n_layers=config.n_layers,
        d_model=config.d_model,
        n_heads=config.n_heads,
        n_kv_heads=config.n_kv_heads,
        mlp_hidden=config.mlp_hidden_size,
        vocab_rows=config.embedding_size,
    )


def config_for(shape: ModelShape, **values) -> LLaDAConfig:
    return LLaDAConfig(
        **{
            "d_model": shape.d_model,
            "n_layers": shape.n_layers,
            "n_heads": shape.n_heads,
            "n_kv_heads": shape.n_kv_heads,
            "mlp_hidden_size": shape.mlp_hidden,
            "vocab_size": shape.vocab_rows,
            "embedding_size": shape.vocab_rows,
            **values,
        }
    )


def parameter_shapes(config: LLaDAConfig) -> dict[str, tuple[int, ...]]:
    """The published LLaDA state-dict keys and shapes for ``config``."""
    d, hs, hidden = config.d_model, config.head_dim, config.mlp_hidden_size
    kv = config.n_kv_heads * hs
    block_shapes = {
        "attn_norm": (d,),
        "q_proj": (config.n_heads * hs, d),
        "k_proj": (kv, d),
        "v_proj": (kv, d),
        "attn_out": (d, d),
        "ff_norm": (d,),
        "ff_proj": (hidden, d),
        "up_proj": (hidden, d),
        "ff_out": (d, hidden),
    }
    shapes = {"model.transformer.wte.weight": (config.embedding_size, d)}
    for i in range(config.n_layers):
        for name, size in block_shapes.items():
            shapes[f"model.transformer.blocks.{i}.{name}.weight"] = size
    shapes["model.transformer.ln_f.weight"] = (d,)
    shapes["model.transformer.ff_out.weight"] = (config.embedding_size, d)
    return shapes


LLADA = ModelFamily(
    name="llada",
    title="LLaDA",
    model_class=LLaDAModelLM,
    modeling_files=("configuration_llada.py", "modeling_llada.py", "modeling_shared.py"),
    tokens=LLADA_TOKENS,
    tokenizer_spec=LLADA_TOKENIZER,
    assistant_header=ASSISTANT_HEADER,
    layer_prefix=r"model\.transformer\.blocks\.\d+\.",
    linear_layers=LINEAR_LAYERS,
    shape=shape,
    parameter_shapes=parameter_shapes,
    config_for=config_for,
    tiny_shape=ModelShape(n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, mlp_hidden=128, vocab_rows=512),
    tiny_values=dict(
        mlp_ratio=4,
        max_sequence_length=1024,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        # Keys of the published config that only the original training code reads.
        activation_type="silu",
        block_type="llama",
        layer_norm_type="rms",
        alibi=False,
        rope=True,
        weight_tying=False,
        include_bias=False,
    ),
    init_std_key="init_std",
    max_positions_key="max_sequence_length",
)
