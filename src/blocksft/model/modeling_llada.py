"""Our own LLaDA implementation, state-dict compatible with the published checkpoints.

Module names reproduce the published parameter keys (``model.transformer.wte.weight``,
``model.transformer.blocks.{i}.q_proj.weight``, ..., ``model.transformer.ff_out.weight``) so the
real safetensors shards load with no missing and no unexpected keys, and no mapping table is needed.
Numerics follow the published modeling code: float32 RMSNorm cast back before the weight, float32
RoPE over whole-input positions with half-split rotation, bidirectional SDPA, SwiGLU MLP, untied
head, no logit scaling.

Beyond the published code: an optional key-padding ``attention_mask``, explicit ``position_ids``
(left-padded batches), a key/value cache whose fresh span can sit anywhere in the sequence (prefix
and dual caches for block decoding), fixed-size cache buffers written in place at given columns
(:class:`StaticCacheSpan`: decoding steps without data-dependent shapes, for CUDA graphs), logits at
selected positions only (training takes loss on a few positions of a 126,464-wide vocabulary) and
gradient checkpointing.

This file imports only torch, transformers and its sibling ``configuration_llada``: checkpoints
carry it for ``trust_remote_code`` loading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_llada import LLaDAConfig

# A cache is one (key, value) pair per layer, each [B, n_kv_heads, S, head_dim], RoPE applied.
LayerCache = tuple[torch.Tensor, torch.Tensor]


@dataclass
class LLaDAOutput(ModelOutput):
    """Output of :class:`LLaDAModelLM`.

    Attributes:
        logits: ``[B, T, V]``, or ``[N, V]`` when ``logits_at`` selected N positions.
        hidden_states: final normed hidden states ``[B, T, D]`` when asked for.
        kv_cache: per-layer (key, value) over all key positions when ``use_cache``.
    """

    logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    kv_cache: list[LayerCache] | None = None


@dataclass
class StaticCacheSpan:
    """Where a forward's keys/values go in fixed-size per-layer cache buffers ``[B, n_kv, S, hs]``.

    Each layer writes the fresh keys/values of the input positions marked ``fresh`` into its buffers
    at their ``columns`` (in place), keeps the buffers' own values everywhere else, and attends over
    all ``S`` buffer columns. Shapes never depend on the data: one decoding step per (batch, length)
    can be captured once in a CUDA graph and replayed.

    Attributes:
        columns: ``[B, T]`` long, the buffer column of each input position.
        fresh: ``[B, T]`` bool, the input positions whose keys/values replace the buffers'.
    """

    columns: torch.Tensor
    fresh: torch.Tensor

    def write(self, layer_cache: LayerCache, k: torch.Tensor, v: torch.Tensor) -> LayerCache:
        """Write ``k``, ``v`` ``[B, n_kv, T, hs]`` into the layer's buffers; returns the buffers."""
        index = self.columns[:, None, :, None].expand_as(k)  # [B, n_kv, T, hs]
        fresh = self.fresh[:, None, :, None]  # [B, 1, T, 1]
        for buffer, new in zip(layer_cache, (k, v)):
            buffer.scatter_(2, index, torch.where(fresh, new, buffer.gather(2, index)))
        return layer_cache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 and cast back *before* the weight, as the published code does.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Half-split rotation: ``cat(-x2, x1)`` over the two halves of the head dim (not pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_angles(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 (cos, sin) of shape [B, 1, T, head_dim] for integer positions [B, T]."""
    exponent = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponent)  # [hs/2]
    freqs = position_ids.float()[..., None] * inv_freq  # [B, T, hs/2]
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, hs]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool) -> torch.Tensor:
    x_ = x.float() if full_precision else x
    out = x_ * cos.to(x_.dtype) + rotate_half(x_) * sin.to(x_.dtype)
    return out.to(x.dtype)


class LLaDABlock(nn.Module):
    """One LLaDA ("llama" block type) layer: attention and SwiGLU MLP, pre-norm residuals."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        d, hs = config.d_model, config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, hs
        self.rope_full_precision = config.rope_full_precision
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, config.n_heads * hs, bias=False)
        self.k_proj = nn.Linear(d, config.n_kv_heads * hs, bias=False)
        self.v_proj = nn.Linear(d, config.n_kv_heads * hs, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=False)
        self.gradient_checkpointing = False

    def _split_heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # [B, n, T, hs]

    def attention(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor | None,
        layer_cache: LayerCache | None,
        span: tuple[int, int] | StaticCacheSpan | None,
    ) -> tuple[torch.Tensor, LayerCache]:
        q = apply_rope(self._split_heads(self.q_proj(h), self.n_heads), cos, sin, self.rope_full_precision)
        k = apply_rope(self._split_heads(self.k_proj(h), self.n_kv_heads), cos, sin, self.rope_full_precision)
        v = self._split_heads(self.v_proj(h), self.n_kv_heads)
        if isinstance(span, StaticCacheSpan):
            k, v = span.write(layer_cache, k, v)
        elif layer_cache is not None:
            # The fresh keys/values replace span [start, end) of the cached ones.
            start, end = span
            k_cache, v_cache = layer_cache
            k = torch.cat((k_cache[:, :, :start], k, k_cache[:, :, end:]), dim=2)
            v = torch.cat((v_cache[:, :, :start], v, v_cache[:, :, end:]), dim=2)
        new_cache = (k, v)
        if self.n_kv_heads != self.n_heads:
            repeat = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=False)  # [B, nh, T, hs]
        b, _, t, _ = out.shape
        return self.attn_out(out.transpose(1, 2).reshape(b, t, -1)), new_cache

    def forward(self, x, cos, sin, key_mask=None, layer_cache=None, span=None):
        att, new_cache = self.attention(self.attn_norm(x), cos, sin, key_mask, layer_cache, span)
        x = x + att
        h = self.ff_norm(x)
        x = x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))
        return x, new_cache


class LLaDATransformer(nn.Module):
    """The body; its ``transformer`` ModuleDict gives the published key prefix."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.embedding_size, config.d_model),
                "blocks": nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
                "ln_f": RMSNorm(config.d_model, config.rms_norm_eps),
                "ff_out": nn.Linear(config.d_model, config.embedding_size, bias=False),
            }
        )


class LLaDAPreTrainedModel(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class LLaDAModelLM(LLaDAPreTrainedModel):
    """LLaDA masked diffusion LM. Logits are not shifted: position i predicts token i."""

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDATransformer(config)
        self.post_init()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.blocks

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.transformer.ff_out

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.transformer.ff_out = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: list[LayerCache] | None = None,
        cache_span: tuple[int, int] | None = None,
        use_cache: bool = False,
        logits_at: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_logits: bool = True,
        **unused,
    ) -> LLaDAOutput:
        """Run the model.

        Args:
            input_ids: ``[B, T]`` token ids (the whole canvas, or the fresh span with a cache).
            attention_mask: ``[B, S]`` 1 for real tokens, 0 for padding, over *all key positions*
                (S = T without a cache, the cached length with one). Padding keys are ignored;
                without a mask every position is attended, as in the published code.
            position_ids: ``[B, T]`` RoPE positions; default ``cache_span[0] + arange(T)``.
            kv_cache: per-layer cache from a previous call with ``use_cache=True``, or fixed-size
                buffers with a :class:`StaticCacheSpan`.
            cache_span: ``(start, end)`` of the cached sequence that ``input_ids`` recomputes;
                keys/values outside it come from the cache. Required with ``kv_cache``. A
                :class:`StaticCacheSpan` instead writes into the buffers in place (``position_ids``
                required).
            use_cache: return the per-layer keys/values of all key positions.
            logits_at: ``[B, T]`` bool; if given, logits only at these positions, ``[N, V]``
                in row-major order (``hidden[logits_at]``), which saves the head's cost.
            output_hidden_states: also return the final normed hidden states ``[B, T, D]``.
            return_logits: set False to skip the LM head entirely (hidden states only).
        """
        if unused:
            unknown = sorted(k for k, v in unused.items() if v is not None and k != "return_dict")
            if unknown:
                raise TypeError(f"LLaDAModelLM.forward got unsupported arguments: {unknown}")
        b, t = input_ids.shape
        if kv_cache is not None and cache_span is None:
            raise ValueError("cache_span=(start, end) is required with kv_cache")
        static = isinstance(cache_span, StaticCacheSpan)
        if static and (kv_cache is None or position_ids is None):
            raise ValueError("a StaticCacheSpan needs kv_cache buffers and position_ids")
        start = cache_span[0] if cache_span is not None and not static else 0
        if cache_span is not None and not static and cache_span[1] - start != t:
            raise ValueError(f"cache_span {cache_span} does not match the input length {t}")
        if position_ids is None:
            position_ids = torch.arange(start, start + t, device=input_ids.device).expand(b, t)
        tr = self.model.transformer
        x = tr.wte(input_ids)  # [B, T, D]
        cos, sin = rope_angles(position_ids, self.config.head_dim, self.config.rope_theta)
        key_mask = None
        if attention_mask is not None:
            key_mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, S]
        caches = []
        for i, block in enumerate(tr.blocks):
            layer_cache = kv_cache[i] if kv_cache is not None else None
            if block.gradient_checkpointing and self.training:
                x, new_cache = block._gradient_checkpointing_func(
                    block.__call__, x, cos, sin, key_mask, layer_cache, cache_span
                )
            else:
                x, new_cache = block(x, cos, sin, key_mask, layer_cache, cache_span)
            if use_cache:
                caches.append(new_cache)
        hidden = tr.ln_f(x)
        logits = None
        if return_logits:
            logits = tr.ff_out(hidden[logits_at] if logits_at is not None else hidden)
        return LLaDAOutput(
            logits=logits,
            hidden_states=hidden if output_hidden_states else None,
            kv_cache=caches if use_cache else None,
        )
