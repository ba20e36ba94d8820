"""What our LLaDA and Dream implementations share: caches, RMSNorm, RoPE, attention, the layer loop,
and where a family's logits sit (the shift).

Both models have the same forward interface: a key-padding (or 4-D) ``attention_mask``, explicit
``position_ids`` (left-padded batches), a key/value cache whose fresh span can sit anywhere in the
sequence (prefix and dual caches for block decoding), fixed-size cache buffers written in place
(:class:`StaticCacheSpan`: decoding steps without data-dependent shapes, for CUDA graphs), logits
at chosen positions only and gradient checkpointing.

Logits shift: a model's output at position ``i`` predicts token ``i + shift``. LLaDA's shift is 0;
Dream's is 1 (it was initialised from an autoregressive model), so the prediction of token ``i``
comes from position ``i - 1`` and position 0 can never be predicted. ``logits_for=targets`` gives
the predictions of chosen target positions for either (:func:`predicting_positions`), and
:func:`align_logits` moves full logits so that position ``i`` holds the prediction of token ``i``.

This file imports only torch: checkpoints carry it beside their modeling file for
``trust_remote_code`` loading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# A cache is one (key, value) pair per layer, each [B, n_kv_heads, S, head_dim], RoPE applied.
LayerCache = tuple[torch.Tensor, torch.Tensor]


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
        # Normalise in float32 and cast back *before* the weight, as both published codes do.
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


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, T, n * hs]`` -> ``[B, n, T, hs]``."""
    b, t, _ = x.shape
    return x.view(b, t, n_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, n, T, hs]`` -> ``[B, T, n * hs]``."""
    b, _, t, _ = x.shape
    return x.transpose(1, 2).reshape(b, t, -1)


def attention_key_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The boolean SDPA mask for a ``[B, S]`` key-padding mask or a ``[B, 1 | H, T, S]`` 4-D mask.

    A 2-D mask hides padding keys from every query (``[B, 1, 1, S]``). A 4-D mask is used as given,
    cast to bool as Dream's published code does (so it holds 1/0 or True/False, not additive values).
    Dream's published 2-D path masks padding queries too (an outer product); that changes only the
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
        # Query head h reads key/value head h // repeat (grouped-query attention).
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


def predicting_positions(targets: torch.Tensor, shift: int) -> torch.Tensor:
    """The positions whose outputs predict ``targets``: target ``i`` <- position ``i - shift``.

    Args:
        targets: ``[B, T]`` bool, the positions whose tokens are to be predicted.
        shift: the model's logits shift (0: LLaDA, ``targets`` itself; 1: Dream).

    Returns:
        ``[B, T]`` bool. Selecting with it keeps the targets' row-major order (the shift is
        monotone within a row).

    Raises:
        ValueError: a target among the first ``shift`` positions, which no position predicts.
    """
    if targets.dim() != 2:
        raise ValueError(f"targets must be [B, T], got shape {tuple(targets.shape)}")
    if shift == 0:
        return targets
    if bool(targets[:, :shift].any()):
        raise ValueError(
            f"position 0 cannot be a target: this model predicts token i from the output at i - {shift} "
            "(start the sequence with a token that is never masked)"
        )
    return F.pad(targets[:, shift:], (0, shift), value=False)


def align_logits(logits: torch.Tensor, shift: int) -> torch.Tensor:
    """Raw ``[B, T, V]`` logits moved so that position ``i`` holds the prediction of token ``i``.

    For shift 1 this is Dream's published sampler's re-alignment,
    ``cat([logits[:, :1], logits[:, :-1]], 1)``: position 0 keeps its own raw logits, which predict
    nothing; it must never be a target.
    """
    if shift == 0:
        return logits
    return torch.cat((logits[:, :shift], logits[:, :-shift]), dim=1)


def head_input(
    hidden: torch.Tensor, logits_at: torch.Tensor | None, logits_for: torch.Tensor | None, shift: int
) -> torch.Tensor:
    """The hidden states the LM head runs on: all ``[B, T, D]``, or ``[N, D]`` at the raw positions
    ``logits_at`` or at the positions predicting the targets ``logits_for``."""
    if logits_at is not None and logits_for is not None:
        raise ValueError("give logits_at (raw positions) or logits_for (target positions), not both")
    if logits_for is not None:
        logits_at = predicting_positions(logits_for, shift)
    return hidden if logits_at is None else hidden[logits_at]


def refuse_unused(unused: dict, owner: str) -> None:
    """Refuse forward arguments a model does not take (``return_dict`` and None values pass)."""
    unknown = sorted(k for k, v in unused.items() if v is not None and k != "return_dict")
    if unknown:
        raise TypeError(f"{owner}.forward got unsupported arguments: {unknown}")
