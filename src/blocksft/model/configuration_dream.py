"""Dream configuration, reading the published Dream-v0-7B ``config.json`` keys.

This file is self-contained (it imports only ``transformers``) because merged checkpoints carry it
next to ``modeling_dream.py`` so that they load with ``trust_remote_code=True`` where blocksft is
not installed. The published config's ``auto_map`` (remote ``DreamConfig`` / ``DreamModel``) is
kept as an attribute; with this class registered for ``model_type "Dream"``, transformers uses it
and never fetches the remote code unless asked to (``trust_remote_code=True``).
"""

from transformers import PretrainedConfig

# Settings of the published Dream config that this implementation does not model. A config that
# asks for anything else fails at load time with the key named, instead of loading silently wrong.
_SUPPORTED_VALUES = {
    "hidden_act": ("silu",),
    "tie_word_embeddings": (False,),
    "use_sliding_window": (False,),
    "attention_dropout": (0.0, 0),
}


def _rope_type(rope_settings) -> str:
    """The RoPE type a ``rope_scaling`` / ``rope_parameters`` value asks for (``default`` if unset)."""
    if not rope_settings:
        return "default"
    return rope_settings.get("rope_type", rope_settings.get("type", "default"))


class DreamConfig(PretrainedConfig):
    """Configuration of a Dream masked diffusion model (``model_type "Dream"``).

    Defaults are Dream-v0-Instruct-7B's (Qwen2.5-7B's shapes: GQA with 28 query and 4 key/value
    heads, RoPE theta 1e6, untied head, 152,064 rows). Keys of the published config that only the
    original code reads (``max_window_layers``, ``sliding_window``, ``initializer_range``, ...) are
    accepted and kept as attributes.
    """

    model_type = "Dream"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 152064,
        hidden_size: int = 3584,
        intermediate_size: int = 18944,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 28,
        num_key_value_heads: int | None = 4,
        hidden_act: str = "silu",
        max_position_embeddings: int = 131072,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 1000000.0,
        rope_scaling: dict | None = None,
        mask_token_id: int = 151666,
        bos_token_id: int | None = 151643,
        eos_token_id: int | None = 151643,
        pad_token_id: int | None = 151643,
        use_cache: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("tie_word_embeddings", False)
        settings = dict(kwargs, hidden_act=hidden_act)
        unsupported = {
            key: settings[key]
            for key, allowed in _SUPPORTED_VALUES.items()
            if key in settings and settings[key] not in allowed
        }
        # transformers 5 may save RoPE settings as ``rope_parameters``; only plain RoPE is modelled.
        rope_settings = {"rope_scaling": rope_scaling, "rope_parameters": kwargs.get("rope_parameters")}
        unsupported |= {key: value for key, value in rope_settings.items() if _rope_type(value) != "default"}
        if unsupported:
            details = ", ".join(f"{key}={value!r}" for key, value in unsupported.items())
            raise ValueError(
                f"Dream config has settings this implementation cannot honour: {details} (supported: "
                + "; ".join(f"{k} in {v}" for k, v in _SUPPORTED_VALUES.items())
                + "; rope_scaling null)"
            )
        saved_theta = (kwargs.get("rope_parameters") or {}).get("rope_theta", rope_theta)
        if saved_theta != rope_theta:
            raise ValueError(
                f"Dream config: rope_parameters.rope_theta={saved_theta} != rope_theta={rope_theta}"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
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
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"Dream config: hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"Dream config: num_attention_heads={self.num_attention_heads} is not divisible by "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"Dream config: the head dim {self.head_dim} must be even for RoPE")
        for name in ("mask_token_id", "pad_token_id"):
            token_id = getattr(self, name)
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                raise ValueError(
                    f"Dream config: {name}={token_id} is outside the vocabulary [0, {self.vocab_size})"
                )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
