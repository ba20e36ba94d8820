"""Our own Dream implementation, state-dict compatible with the published Dream-v0-7B checkpoints.

Module names reproduce the published (Qwen2) parameter keys (``model.embed_tokens.weight``,
``model.layers.{i}.self_attn.q_proj.{weight,bias}``, ..., ``model.norm.weight``, ``lm_head.weight``)
so the real safetensors shards load with no missing and no unexpected keys, and no mapping table is
needed. Numerics follow the published modeling code: float32 RMSNorm cast back before the weight,
rotate-half RoPE with cos/sin computed in float32 and applied in the activations' dtype, key/value
heads repeated to the query heads (GQA), bidirectional SDPA, SwiGLU MLP, q/k/v biases, untied head.
As published, the embedding row of the pad token receives no gradient (``padding_idx``).

Shifted prediction: Dream was initialised from an autoregressive model, so the output at position
``i`` predicts token ``i + 1``. ``logits`` stay the published raw logits; consumers re-align them
(:func:`realign_logits`), and ``logits_for=`` gives the prediction for chosen *target* positions
directly, from the hidden states one position earlier (:func:`predicting_positions`).

Beyond the published code, with the same interface as our LLaDA model: a key-padding
``attention_mask`` (a 4-D mask as the published code builds is accepted too), explicit
``position_ids`` (left-padded batches), a key/value cache whose fresh span can sit anywhere in the
sequence, fixed-size cache buffers written in place (:class:`StaticCacheSpan`), logits at selected
positions only and gradient checkpointing. The cache holds the key/value heads only; they are
repeated to the query heads at attention.

This file imports only torch, transformers and its siblings ``configuration_dream`` and
``modeling_llada`` (shared cache types, RMSNorm and RoPE): checkpoints carry them for
``trust_remote_code`` loading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_dream import DreamConfig
from .modeling_llada import LayerCache, RMSNorm, StaticCacheSpan, apply_rope, rope_angles


def predicting_positions(targets: torch.Tensor) -> torch.Tensor:
    """The positions whose outputs predict ``targets`` under Dream's shift: target ``i`` <- ``i - 1``.

    Args:
        targets: ``[B, T]`` bool, the positions whose tokens are to be predicted.

    Returns:
        ``[B, T]`` bool, true at ``i - 1`` for every target ``i``. Selecting with it keeps the
        targets' row-major order (the shift is monotone within a row).

    Raises:
        ValueError: a target at position 0, which no position predicts.
    """
    if targets.dim() != 2:
        raise ValueError(f"targets must be [B, T], got shape {tuple(targets.shape)}")
    if bool(targets[:, 0].any()):
        raise ValueError(
            "position 0 cannot be a target: Dream predicts token i from the output at i - 1 "
            "(start the sequence with a token that is never masked)"
        )
    return F.pad(targets[:, 1:], (0, 1), value=False)


def realign_logits(logits: torch.Tensor) -> torch.Tensor:
    """Dream's raw ``[B, T, V]`` logits moved so that position ``i`` holds the prediction of token ``i``.

    The published sampler's re-alignment: ``cat([logits[:, :1], logits[:, :-1]], 1)``. Position 0
    keeps its own raw logits, which predict nothing; it must never be a target.
    """
    return torch.cat((logits[:, :1], logits[:, :-1]), dim=1)


def attention_key_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The boolean SDPA mask for a ``[B, S]`` key-padding mask or a ``[B, 1 | H, T, S]`` 4-D mask.

    A 2-D mask hides padding keys from every query (``[B, 1, 1, S]``). A 4-D mask is used as given,
    cast to bool as the published code does (so it holds 1/0 or True/False, not additive values).
    The published 2-D path masks padding queries too (an outer product); that changes only the
    outputs at padding positions, which nothing reads.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        return attention_mask.bool()[:, None, None, :]
    if attention_mask.dim() == 4:
        return attention_mask.bool()
    shape = tuple(attention_mask.shape)
    raise ValueError(f"attention_mask must be [B, S] or [B, 1, T, S], got shape {shape}")


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    layer_cache: LayerCache | None,
    span: tuple[int, int] | StaticCacheSpan | None,
) -> tuple[torch.Tensor, LayerCache]:
    """Bidirectional SDPA of fresh queries over fresh and cached keys/values (RoPE applied).

    Args:
        q: ``[B, nh, T, hs]``; k, v: ``[B, n_kv, T, hs]`` for the input positions.
        key_mask: bool mask broadcastable to ``[B, nh, T, S]``, or None to attend every key.
        layer_cache: this layer's (key, value) ``[B, n_kv, S, hs]`` or None.
        span: ``(start, end)``: the fresh keys/values replace that span of the cached ones; or a
            :class:`StaticCacheSpan` that writes them into fixed-size buffers in place.

    Returns:
        ``[B, nh, T, hs]`` attention output and the (key, value) pair over all key positions, with
        the ``n_kv`` heads only (what a cache stores).
    """
    if isinstance(span, StaticCacheSpan):
        k, v = span.write(layer_cache, k, v)
    elif layer_cache is not None:
        start, end = span
        k_cache, v_cache = layer_cache
        k = torch.cat((k_cache[:, :, :start], k, k_cache[:, :, end:]), dim=2)
        v = torch.cat((v_cache[:, :, :start], v, v_cache[:, :, end:]), dim=2)
    new_cache = (k, v)
    repeat = q.shape[1] // k.shape[1]
    if repeat > 1:
        # Query head h reads key/value head h // repeat, as the published repeat_kv.
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=False), new_cache


def resolve_positions(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    kv_cache: list[LayerCache] | None,
    cache_span: tuple[int, int] | StaticCacheSpan | None,
) -> torch.Tensor:
    """The ``[B, T]`` RoPE positions: ``position_ids``, else ``cache_span[0] + arange(T)``.

    Raises:
        ValueError: a cache without a span, a :class:`StaticCacheSpan` without buffers or
            positions, or a span whose length is not the input's.
    """
    b, t = input_ids.shape
    if kv_cache is not None and cache_span is None:
        raise ValueError("cache_span=(start, end) is required with kv_cache")
    if isinstance(cache_span, StaticCacheSpan):
        if kv_cache is None or position_ids is None:
            raise ValueError("a StaticCacheSpan needs kv_cache buffers and position_ids")
        return position_ids
    start = 0 if cache_span is None else cache_span[0]
    if cache_span is not None and cache_span[1] - start != t:
        raise ValueError(f"cache_span {cache_span} does not match the input length {t}")
    if position_ids is not None:
        return position_ids
    return torch.arange(start, start + t, device=input_ids.device).expand(b, t)


def run_layers(
    layers: nn.ModuleList,
    x: torch.Tensor,
    shared: tuple,
    kv_cache: list[LayerCache] | None,
    cache_span: tuple[int, int] | StaticCacheSpan | None,
    training: bool,
    use_cache: bool,
) -> tuple[torch.Tensor, list[LayerCache] | None]:
    """Run ``x`` through ``layers``, each called as ``layer(x, *shared, layer_cache, cache_span)``.

    Layers with ``gradient_checkpointing`` set recompute their activations in the backward pass
    while training. Returns the output and, with ``use_cache``, each layer's (key, value) over
    all key positions (None otherwise, so that no layer's keys/values outlive its backward).
    """
    caches = []
    for i, layer in enumerate(layers):
        args = (x, *shared, kv_cache[i] if kv_cache is not None else None, cache_span)
        if layer.gradient_checkpointing and training:
            x, new_cache = layer._gradient_checkpointing_func(layer.__call__, *args)
        else:
            x, new_cache = layer(*args)
        if use_cache:
            caches.append(new_cache)
    return x, caches if use_cache else None


@dataclass
class DreamOutput(ModelOutput):
    """Output of :class:`DreamModel`.

    Attributes:
        logits: the published raw logits ``[B, T, V]`` (position i predicts token i + 1); ``[N, V]``
            with ``logits_at`` (raw, at those positions) or ``logits_for`` (the prediction of each
            selected target).
        hidden_states: final normed hidden states ``[B, T, D]`` when asked for.
        kv_cache: per-layer (key, value) ``[B, n_kv, S, hs]`` over all key positions when ``use_cache``.
    """

    logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    kv_cache: list[LayerCache] | None = None


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        d, hs = config.hidden_size, config.head_dim
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = hs
        self.q_proj = nn.Linear(d, self.n_heads * hs, bias=True)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hs, bias=True)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hs, bias=True)
        self.o_proj = nn.Linear(self.n_heads * hs, d, bias=False)

    def _split_heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # [B, n, T, hs]

    def forward(self, h, cos, sin, key_mask, layer_cache, span) -> tuple[torch.Tensor, LayerCache]:
        # RoPE in the activations' dtype with float32-computed angles, as the published code.
        q = apply_rope(self._split_heads(self.q_proj(h), self.n_heads), cos, sin, full_precision=False)
        k = apply_rope(self._split_heads(self.k_proj(h), self.n_kv_heads), cos, sin, full_precision=False)
        v = self._split_heads(self.v_proj(h), self.n_kv_heads)
        out, new_cache = cached_attention(q, k, v, key_mask, layer_cache, span)  # [B, nh, T, hs]
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), new_cache


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(nn.Module):
    """One Dream (Qwen2) layer: attention and SwiGLU MLP with pre-norm residuals."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        self.self_attn = DreamAttention(config)
        self.mlp = DreamMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, x, cos, sin, key_mask=None, layer_cache=None, span=None):
        att, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, key_mask, layer_cache, span)
        x = x + att
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_cache


class DreamTransformer(nn.Module):
    """The body, under the ``model.`` key prefix of the published checkpoints."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        pad = config.pad_token_id
        padding_idx = pad if pad is not None and 0 <= pad < config.vocab_size else None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=padding_idx)
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamPreTrainedModel(PreTrainedModel):
    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class DreamModel(DreamPreTrainedModel):
    """Dream masked diffusion LM. Logits are shifted: the output at position i predicts token i + 1."""

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.model = DreamTransformer(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: list[LayerCache] | None = None,
        cache_span: tuple[int, int] | StaticCacheSpan | None = None,
        use_cache: bool = False,
        logits_at: torch.Tensor | None = None,
        logits_for: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_logits: bool = True,
        **unused,
    ) -> DreamOutput:
        """Run the model.

        Args:
            input_ids: ``[B, T]`` token ids (the whole canvas, or the fresh span with a cache).
            attention_mask: ``[B, S]`` 1 for real tokens, 0 for padding, over *all key positions*
                (S = T without a cache, the cached length with one); padding keys are ignored.
                Or a 4-D ``[B, 1, T, S]`` 1/0 mask, used as given. Without a mask every position
                is attended, as in the published code.
            position_ids: ``[B, T]`` RoPE positions; default ``cache_span[0] + arange(T)``. For
                left padding the published sampler uses ``cumsum(attention_mask) - 1``.
            kv_cache: per-layer cache from a previous call with ``use_cache=True``, or fixed-size
                buffers with a :class:`StaticCacheSpan`.
            cache_span: ``(start, end)`` of the cached sequence that ``input_ids`` recomputes;
                keys/values outside it come from the cache. Required with ``kv_cache``. A
                :class:`StaticCacheSpan` instead writes into the buffers in place (``position_ids``
                required).
            use_cache: return the per-layer keys/values of all key positions.
            logits_at: ``[B, T]`` bool; raw logits only at these positions, ``[N, V]`` in row-major
                order (``logits[logits_at]``), which saves the head's cost.
            logits_for: ``[B, T]`` bool *target* positions; the logits that predict them, ``[N, V]``
                in row-major order: equal to ``realign_logits(logits)[logits_for]``, computed from
                the hidden states one position earlier. A target at input position 0 raises; in
                a left-padded row the first real token is predicted from a padding position, so it
                should not be a target either.
            output_hidden_states: also return the final normed hidden states ``[B, T, D]``.
            return_logits: set False to skip the LM head entirely (hidden states only).
        """
        if unused:
            unknown = sorted(k for k, v in unused.items() if v is not None and k != "return_dict")
            if unknown:
                raise TypeError(f"DreamModel.forward got unsupported arguments: {unknown}")
        if logits_at is not None and logits_for is not None:
            raise ValueError("give logits_at (raw positions) or logits_for (target positions), not both")
        if logits_for is not None:
            logits_at = predicting_positions(logits_for)
        position_ids = resolve_positions(input_ids, position_ids, kv_cache, cache_span)
        x = self.model.embed_tokens(input_ids)  # [B, T, D]
        cos, sin = rope_angles(position_ids, self.config.head_dim, self.config.rope_theta)
        key_mask = attention_key_mask(attention_mask)
        shared = (cos, sin, key_mask)
        x, caches = run_layers(self.model.layers, x, shared, kv_cache, cache_span, self.training, use_cache)
        hidden = self.model.norm(x)
        logits = None
        if return_logits:
            logits = self.lm_head(hidden[logits_at] if logits_at is not None else hidden)
        return DreamOutput(
            logits=logits,
            hidden_states=hidden if output_hidden_states else None,
            kv_cache=caches,
        )
