"""Dream (Dream-org/Dream-v0-Instruct-7B and -Base-7B): the second family.

Shifted logits (Dream was initialised from Qwen2.5-7B, an autoregressive model: the output at
position i predicts token i + 1, so position 0 is never predicted); special tokens ``<|mask|>``
151666, EOS and pad ``<|endoftext|>`` 151643, end of turn ``<|im_end|>`` 151645, no BOS; the ChatML
chat template, which adds a default system turn and honours ``add_generation_prompt``; Qwen2's
parameter names ``model.layers.{i}.self_attn.{q,k,v,o}_proj`` and ``model.layers.{i}.mlp.{gate,up,
down}_proj`` (q/k/v with biases), an untied ``lm_head``, 152,064 embedding rows (the tokenizer has
151,667 tokens).

LoRA ``reference`` preset: ``q_proj k_proj v_proj up_proj``, the layers the paper adapted on LLaDA
(the reference script's seven Llama names would match all seven of Qwen2's layers: that is ``all``).
"""

from __future__ import annotations

from blocksft.model.configuration_dream import DreamConfig
from blocksft.model.modeling_dream import DreamModel
from blocksft.special_tokens import TokenNames
from blocksft.tokenizer import TokenizerSpec

from .base import ModelFamily, ModelShape

EOS = "<|endoftext|>"  # EOS and pad
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # the end of a turn
MASK = "<|mask|>"
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

# Ids 0..3 in the order EOS (also pad), im_start, im_end, mask; plain encoding adds no BOS, as
# Qwen2's tokenizer does.
DREAM_TOKENIZER = TokenizerSpec(
    special_tokens=SPECIAL_TOKENS, eos=EOS, pad=EOS, mask=MASK, chat_template=DREAM_CHAT_TEMPLATE
)

LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def shape(config: DreamConfig) -> ModelShape:
    return ModelShape(
        n_layers=config.num_hidden_layers,
        d_model=config.hidden_size,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        mlp_hidden=config.intermediate_size,
        vocab_rows=config.vocab_size,
    )


def config_for(shape: ModelShape, **values) -> DreamConfig:
    return DreamConfig(
        **{
            "hidden_size": shape.d_model,
            "num_hidden_layers": shape.n_layers,
            "num_attention_heads": shape.n_heads,
            "num_key_value_heads": shape.n_kv_heads,
            "intermediate_size": shape.mlp_hidden,
            "vocab_size": shape.vocab_rows,
            **values,
        }
    )


def parameter_shapes(config: DreamConfig) -> dict[str, tuple[int, ...]]:
    """The published Dream (Qwen2) state-dict keys and shapes for ``config``."""
    d, hs, hidden = config.hidden_size, config.head_dim, config.intermediate_size
    q, kv = config.num_attention_heads * hs, config.num_key_value_heads * hs
    layer_shapes = {
        "input_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (q, d),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (d, q),
        "post_attention_layernorm.weight": (d,),
        "mlp.gate_proj.weight": (hidden, d),
        "mlp.up_proj.weight": (hidden, d),
        "mlp.down_proj.weight": (d, hidden),
    }
    shapes = {"model.embed_tokens.weight": (config.vocab_size, d)}
    for i in range(config.num_hidden_layers):
        for name, size in layer_shapes.items():
            shapes[f"model.layers.{i}.{name}"] = size
    shapes["model.norm.weight"] = (d,)
    shapes["lm_head.weight"] = (config.vocab_size, d)
    return shapes


DREAM = ModelFamily(
    name="dream",
    title="Dream",
    model_class=DreamModel,
    modeling_files=("configuration_dream.py", "modeling_dream.py", "modeling_shared.py"),
    tokens=TokenNames(mask=MASK, end_of_turn=IM_END),
    tokenizer_spec=DREAM_TOKENIZER,
    assistant_header=ASSISTANT_HEADER,
    layer_prefix=r"model\.layers\.\d+\.(?:self_attn|mlp)\.",
    linear_layers=LINEAR_LAYERS,
    shape=shape,
    parameter_shapes=parameter_shapes,
    config_for=config_for,
    tiny_shape=ModelShape(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, mlp_hidden=128, vocab_rows=512),
    tiny_values=dict(
        max_position_embeddings=1024,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        # Keys of the published config that only the original code reads.
        hidden_act="silu",
        tie_word_embeddings=False,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=2,
        attention_dropout=0.0,
        rope_scaling=None,
    ),
    init_std_key="initializer_range",
    max_positions_key="max_position_embeddings",
)
