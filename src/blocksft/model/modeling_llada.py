"""Our own LLaDA implementation, state-dict compatible with the published checkpoints.

Module names reproduce the published parameter keys (``model.transformer.wte.weight``,
``model.transformer.blocks.{i}.q_proj.weight``, ..., ``model.transformer.ff_out.weight``) so the
real safetensors shards load with no missing and no unexpected keys, and no mapping table is needed.
Numerics follow the published modeling code: float32 RMSNorm cast back before the weight, float32
RoPE over whole-input positions with half-split rotation, bidirectional SDPA, SwiGLU MLP, untied
head, no logit scaling.

Beyond the published code, with the same interface as our Dream model (the pieces both share are
in ``modeling_shared``): an optional key-padding ``attention_mask``, explicit ``position_ids``
(left-padded batches), a key/value cache whose fresh span can sit anywhere in the sequence (prefix
and dual caches for block decoding), fixed-size cache buffers written in place at given columns
(:class:`StaticCacheSpan`: decoding steps without data-dependent shapes, for CUDA graphs), logits at
selected positions only (training takes loss on a few positions of a 126,464-wide vocabulary) and
gradient checkpointing. Logits are not shifted: position i predicts token i.

This file imports only torch, transformers and its siblings ``configuration_llada`` and
``modeling_shared``: checkpoints carry them for ``trust_remote_code`` loading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_llada import LLaDAConfig
from .modeling_shared import (
    LayerCache,
    RMSNorm,
    StaticCacheSpan,
    apply_rope,
    attention_key_mask,
    cached_attention,
    head_input,
    merge_heads,
    refuse_unused,
    resolve_positions,
    rope_angles,
    run_layers,
    split_heads,
)


@dataclass
class LLaDAOutput(ModelOutput):
    """Output of :class:`LLaDAModelLM`.

    Attributes:
        logits: ``[B, T, V]``, or ``[N, V]`` when ``logits_at`` / ``logits_for`` selected N positions.
        hidden_states: final normed hidden states ``[B, T, D]`` when asked for.
        kv_cache: per-layer (key, value) over all key positions when ``use_cache``.
    """

    logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    kv_cache: list[LayerCache] | None = None


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

    def attention(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor | None,
        layer_cache: LayerCache | None,
        span: tuple[int, int] | StaticCacheSpan | None,
    ) -> tuple[torch.Tensor, LayerCache]:
        full = self.rope_full_precision
        q = apply_rope(split_heads(self.q_proj(h), self.n_heads), cos, sin, full)
        k = apply_rope(split_heads(self.k_proj(h), self.n_kv_heads), cos, sin, full)
        v = split_heads(self.v_proj(h), self.n_kv_heads)
        out, new_cache = cached_attention(q, k, v, key_mask, layer_cache, span)  # [B, nh, T, hs]
        return self.attn_out(merge_heads(out)), new_cache

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

    logits_shift = 0  # the output at position i predicts token i + logits_shift
    # The transformers Auto classes this model is registered with (and a checkpoint's auto_map names).
    auto_classes = ("AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM")

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
        cache_span: tuple[int, int] | StaticCacheSpan | None = None,
        use_cache: bool = False,
        logits_at: torch.Tensor | None = None,
        logits_for: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_logits: bool = True,
        **unused,
    ) -> LLaDAOutput:
        """Run the model.

        Args:
            input_ids: ``[B, T]`` token ids (the whole canvas, or the fresh span with a cache).
            attention_mask: ``[B, S]`` 1 for real tokens, 0 for padding, over *all key positions*
                (S = T without a cache, the cached length with one), or a 4-D ``[B, 1, T, S]`` 1/0
                mask. Padding keys are ignored; without a mask every position is attended, as in
                the published code.
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
            logits_for: ``[B, T]`` bool *target* positions: the logits that predict them. LLaDA's
                logits are not shifted, so this is ``logits_at`` (the same argument as Dream's).
            output_hidden_states: also return the final normed hidden states ``[B, T, D]``.
            return_logits: set False to skip the LM head entirely (hidden states only).
        """
        refuse_unused(unused, type(self).__name__)
        position_ids = resolve_positions(input_ids, position_ids, kv_cache, cache_span)
        tr = self.model.transformer
        x = tr.wte(input_ids)  # [B, T, D]
        cos, sin = rope_angles(position_ids, self.config.head_dim, self.config.rope_theta)
        shared = (cos, sin, attention_key_mask(attention_mask))
        x, caches = run_layers(tr.blocks, x, shared, kv_cache, cache_span, self.training, use_cache)
        hidden = tr.ln_f(x)
        logits = None
        if return_logits:
            logits = tr.ff_out(head_input(hidden, logits_at, logits_for, self.logits_shift))
        return LLaDAOutput(
            logits=logits,
            hidden_states=hidden if output_hidden_states else None,
            kv_cache=caches,
        )
