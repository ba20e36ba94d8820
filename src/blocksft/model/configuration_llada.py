"""LLaDA configuration, reading the published LLaDA-8B-Instruct ``config.json`` keys.

This file is self-contained (it imports only ``transformers``) because merged checkpoints carry
it next to ``modeling_llada.py`` so that they load with ``trust_remote_code=True`` where blocksft
is not installed.
"""

from transformers import PretrainedConfig

# Settings of the published LLaDA config that this implementation does not model. A config that
# asks for anything else fails at load time with the key named, instead of loading silently wrong.
_SUPPORTED_VALUES = {
    "alibi": (False,),
    "weight_tying": (False,),
    "block_type": ("llama",),
    "layer_norm_type": ("rms",),
    "activation_type": ("silu", "swiglu"),
    "include_bias": (False,),
    "include_qkv_bias": (False,),
    "attention_layer_norm": (False,),
    "input_emb_norm": (False,),
    "scale_logits": (False,),
    "rope": (True,),
    "layer_norm_with_affine": (True,),
    "bias_for_layer_norm": (False, None),
    "clip_qkv": (None,),
    "block_group_size": (1,),
    "multi_query_attention": (None, False),
}


class LLaDAConfig(PretrainedConfig):
    """Configuration of a LLaDA masked diffusion model (``model_type "llada"``).

    Defaults are LLaDA-8B-Instruct's. Keys of the published config that only affect the original
    training code (``init_fn``, ``precision``, dropouts, ...) are accepted and kept as attributes.
    """

    model_type = "llada"
    keys_to_ignore_at_inference = ["kv_cache"]

    def __init__(
        self,
        d_model: int = 4096,
        n_layers: int = 32,
        n_heads: int = 32,
        n_kv_heads: int | None = 32,
        mlp_hidden_size: int | None = 12288,
        mlp_ratio: int = 4,
        vocab_size: int = 126464,
        embedding_size: int | None = 126464,
        max_sequence_length: int = 4096,
        rope_theta: float = 500000.0,
        rope_full_precision: bool = True,
        rms_norm_eps: float = 1e-5,
        init_std: float = 0.02,
        mask_token_id: int = 126336,
        bos_token_id: int | None = 126080,
        eos_token_id: int | None = 126081,
        pad_token_id: int | None = 126081,
        use_cache: bool = False,
        **kwargs,
    ):
        unsupported = {
            key: kwargs[key]
            for key, allowed in _SUPPORTED_VALUES.items()
            if key in kwargs and kwargs[key] not in allowed
        }
        if unsupported:
            details = ", ".join(
                f"{key}={value!r} (supported: {', '.join(map(repr, _SUPPORTED_VALUES[key]))})"
                for key, value in unsupported.items()
            )
            raise ValueError(f"LLaDA config has settings this implementation cannot honour: {details}")
        kwargs.setdefault("tie_word_embeddings", False)
        if kwargs["tie_word_embeddings"]:
            raise ValueError("LLaDA config: tie_word_embeddings=True is not supported (weight_tying)")
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.mlp_ratio = mlp_ratio
        self.mlp_hidden_size = mlp_hidden_size if mlp_hidden_size else mlp_ratio * d_model
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size if embedding_size else vocab_size
        self.max_sequence_length = max_sequence_length
        self.rope_theta = rope_theta
        self.rope_full_precision = rope_full_precision
        self.rms_norm_eps = rms_norm_eps
        self.init_std = init_std
        self.mask_token_id = mask_token_id
        self.use_cache = use_cache
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )
        self._validate_shapes()

    def _validate_shapes(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"LLaDA config: d_model={self.d_model} is not divisible by n_heads={self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"LLaDA config: n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}"
            )
        if self.embedding_size < self.vocab_size:
            raise ValueError(
                f"LLaDA config: embedding_size={self.embedding_size} < vocab_size={self.vocab_size}"
            )
        if not 0 <= self.mask_token_id < self.embedding_size:
            raise ValueError(
                f"LLaDA config: mask_token_id={self.mask_token_id} is outside the embedding "
                f"table [0, {self.embedding_size})"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    # Names that generic transformers/PEFT/DeepSpeed code looks for.
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def num_attention_heads(self) -> int:
        return self.n_heads
