"""The speed settings of a training run: ``auto`` resolved for the device, the model and the batch.

``--torch-compile``, ``--gradient-checkpointing`` and ``--group-by-length`` take ``auto``, ``on`` or
``off`` (``auto`` by default). On CPU every ``auto`` is ``off``: CPU runs (tests, the demo) run as
they always did. On a GPU:

* ``torch_compile``: on, when ``torch.compile`` can run here (TorchDynamo supports this Python, and
  Triton is installed for the inductor backend). Should compiling still fail at the first step,
  the blocks go back to eager with a one-line note (:func:`compile_blocks`).
* ``gradient_checkpointing``: on only when :func:`estimate_training_memory` (no checkpointing)
  exceeds :data:`FREE_MEMORY_SHARE` of the device's free memory (the smallest over ranks).
* ``group_by_length``: on when grouping keeps the run's semantics: each sample's weight in the loss
  must not depend on its batch-mates (``--loss-normalize per_sample_masked`` or ``answer_len``: a
  per-sample mean, then the mean over samples), and padding must be neither trained
  (``--supervise-padding``) nor attended (``--attend-padding``), nor fixed (``--pad-to-max-len``,
  where grouping saves nothing). Then every epoch trains exactly its (sample, block) pairs, each
  with the same weight, and only which samples share a micro-batch changes. The paper recipes pad
  to 256 and attend the padding: grouping stays off for them.

What was chosen and why is printed in one line and recorded in the run's ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch._dynamo
import torch.utils._triton
from torch._dynamo.exc import TorchDynamoException

from blocksft.config.train import TrainConfig

from .choices import Choice
from .engine import full_numel

# Bytes that autograd keeps per token and block of a bf16 LLaDA under LoRA, per unit of d_model and
# per unit of the MLP width (norms, projections' inputs, RoPE, attention output, SwiGLU's three
# intermediates, LoRA dropout masks). The smallest round numbers that keep the estimate at or
# above what one H200 measured at LLaDA-8B shape, LoRA r256 on the reference targets, micro-batch
# 32 x 256 tokens (bench/RESULTS.md): 66.5 GiB without checkpointing (estimate 69.1), 23.0 GiB
# with it (estimate 23.4).
ACTIVATION_BYTES_PER_D_MODEL = 24
ACTIVATION_BYTES_PER_MLP_UNIT = 8
# Per computed logit: the bf16 logits, their float32 copy for the cross-entropy and the float32
# log-probabilities it keeps for the backward pass.
BYTES_PER_LOGIT = 10
# Checkpointing turns on when the estimate exceeds this share of the free memory: the rest covers
# the allocator's fragmentation, the CUDA context and what the estimate leaves out.
FREE_MEMORY_SHARE = 0.9
GROUPING_LOSSES = ("per_sample_masked", "answer_len")


# ----- Peak memory ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step holds at its peak, by kind.

    Attributes:
        weights: every parameter (frozen and trained) in its dtype.
        optimizer: the trained parameters' gradients and AdamW's two moments.
        activations: what the blocks keep for the backward pass at the peak.
        head: the LM head's logits and the cross-entropy's buffers.
    """

    weights: int
    optimizer: int
    activations: int
    head: int

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.activations + self.head


def estimate_training_memory(
    *,
    weight_bytes: int,
    trainable_bytes: int,
    n_layers: int,
    d_model: int,
    mlp_hidden: int,
    vocab: int,
    tokens: int,
    logit_positions: int,
    checkpointing: bool,
    hidden_bytes: int = 2,
) -> MemoryEstimate:
    """The peak memory of one training step of a LLaDA-style model.

    Args:
        weight_bytes: all parameters' bytes; trainable_bytes: the trained ones' (under LoRA, the
            adapters, float32 in PEFT): each gets a gradient and two AdamW moments of its size.
        n_layers, d_model, mlp_hidden, vocab: the model's shape.
        tokens: positions per micro-batch (``micro_batch x`` the padded length).
        logit_positions: positions whose logits are computed (the loss positions, or all).
        checkpointing: gradient checkpointing keeps each block's input (``hidden_bytes x d_model``
            per token) and rebuilds one block's activations at a time in the backward pass, after
            the head's buffers are gone (the larger of the two counts, under ``activations``);
            without it every block's activations are kept.
        hidden_bytes: bytes of one hidden-state element (2 in bf16).

    Returns:
        A :class:`MemoryEstimate` (``.total`` in bytes).
    """
    per_block = tokens * (ACTIVATION_BYTES_PER_D_MODEL * d_model + ACTIVATION_BYTES_PER_MLP_UNIT * mlp_hidden)
    head = logit_positions * vocab * BYTES_PER_LOGIT
    if checkpointing:
        kept = n_layers * tokens * d_model * hidden_bytes
        activations, head = kept + max(per_block, head), 0
    else:
        activations = n_layers * per_block
    return MemoryEstimate(weight_bytes, 3 * trainable_bytes, activations, head)


def needs_checkpointing(estimate: MemoryEstimate, free_bytes: int) -> bool:
    """Whether a step without checkpointing would not fit the free memory with a margin."""
    return estimate.total > FREE_MEMORY_SHARE * free_bytes


# ----- Resolving ``auto`` -----------------------------------------------------------------------


def _choice(setting: str, asked: str, auto_on: bool, why: str) -> Choice:
    if asked != "auto":
        return Choice(setting, asked, asked, "as asked")
    return Choice(setting, asked, "on" if auto_on else "off", f"auto: {why}")


def resolve_grouping(config, on_gpu: bool) -> Choice:
    """``group_by_length`` for a run (see the module docstring for the rule)."""
    asked = config.group_by_length
    if not on_gpu:
        return _choice("group_by_length", asked, False, "CPU")
    blockers = [
        (config.pad_to_max_len, "batches padded to --max-len"),
        (config.attend_padding, "padding attended"),
        (config.supervise_padding, "padding trained"),
        (config.loss_normalize not in GROUPING_LOSSES, f"loss normalised by {config.loss_normalize}"),
    ]
    reasons = [why for blocked, why in blockers if blocked]
    if reasons:
        return _choice("group_by_length", asked, False, "; ".join(reasons))
    return _choice("group_by_length", asked, True, "per-sample loss, batches padded to their longest record")


def compile_unavailable(on_gpu: bool) -> str | None:
    """Why ``torch.compile`` cannot run here, or None."""
    if not torch._dynamo.is_dynamo_supported():
        return "TorchDynamo does not support this Python"
    if on_gpu:
        if not torch.utils._triton.has_triton():
            return "Triton is not installed"
    return None


def resolve_compile(config, on_gpu: bool) -> Choice:
    """``torch_compile`` for a run: compiled blocks on a GPU where ``torch.compile`` can run."""
    asked = config.torch_compile
    if not on_gpu:
        return _choice("torch_compile", asked, False, "CPU")
    missing = compile_unavailable(on_gpu)
    if missing:
        return _choice("torch_compile", asked, False, f"unavailable: {missing}")
    return _choice("torch_compile", asked, True, "CUDA")


def resolve_checkpointing(
    config, on_gpu: bool, estimate: MemoryEstimate | None, free_bytes: int | None
) -> Choice:
    """``gradient_checkpointing`` for a run: on when the step would not fit without it."""
    asked = config.gradient_checkpointing
    if not on_gpu or estimate is None or free_bytes is None:
        return _choice("gradient_checkpointing", asked, False, "CPU")
    gib = 2**30
    why = f"estimated peak {estimate.total / gib:.1f} GiB without it, {free_bytes / gib:.1f} GiB free"
    return _choice("gradient_checkpointing", asked, needs_checkpointing(estimate, free_bytes), why)


def run_memory_estimate(model, config, *, blockwise: bool) -> MemoryEstimate:
    """:func:`estimate_training_memory` for a run's model (adapters attached), without checkpointing.

    The padded length is ``--max-len`` (a batch may hold a record that long); the logits are
    computed at every position without ``--sparse-logits``, else at the loss positions: at most
    ``--block-size`` per sample (blockwise), half the positions for full-sequence SFT (its mask rate
    averages one half), ``--ce-chunk-size`` at a time with the chunked head.
    """
    params = list(model.parameters())
    shape = model.config
    tokens = config.micro_batch * config.max_len
    if not config.sparse_logits:
        positions = tokens
    else:
        positions = config.micro_batch * (config.block_size if blockwise else config.max_len // 2)
        if config.ce_chunk_size:
            positions = min(positions, config.ce_chunk_size)
    return estimate_training_memory(
        weight_bytes=sum(full_numel(p) * p.element_size() for p in params),
        trainable_bytes=sum(full_numel(p) * p.element_size() for p in params if p.requires_grad),
        n_layers=shape.n_layers,
        d_model=shape.d_model,
        mlp_hidden=shape.mlp_hidden_size,
        vocab=shape.embedding_size,
        tokens=tokens,
        logit_positions=positions,
        checkpointing=False,
    )


def free_device_memory() -> int:
    """The memory this process can use on its GPU: what is free plus what its allocator holds
    already (the model may be there), the smallest over ranks (every rank must choose alike)."""
    free = torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = torch.tensor([free], dtype=torch.int64, device="cuda")
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        free = int(value.item())
    return free


def resolve_model_speed(config: TrainConfig, model, objective, on_gpu: bool) -> list[Choice]:
    """``torch_compile`` and ``gradient_checkpointing`` for a run whose model is built (see
    module docstring); the memory estimate only when checkpointing is ``auto`` on a GPU."""
    estimate = free = None
    if on_gpu and config.gradient_checkpointing == "auto":
        estimate = run_memory_estimate(model, config, blockwise=objective.blockwise)
        free = free_device_memory()
    return [resolve_compile(config, on_gpu), resolve_checkpointing(config, on_gpu, estimate, free)]


# ----- Compiled blocks ---------------------------------------------------------------------------


def compile_blocks(model, backend: str = "inductor", on_fallback=None) -> None:
    """``torch.compile`` each transformer block's forward (dynamic shapes: batches differ in length).

    The blocks, not the whole model: the number of loss positions makes the head's input
    data-dependent in size, which breaks a whole-model graph. The compiled forward is an instance
    attribute of the block; deleting it goes back to eager. ``backend``: ``torch.compile``'s (tests
    trace with ``"eager"``, which skips code generation).

    Compiling happens at a block's first call. If it fails there (no working compiler, an
    unsupported operation: a ``TorchDynamoException``), every block goes back to eager, that call
    runs eagerly, and ``on_fallback(note)`` is told once; errors of the compiled code itself
    (out of memory, ...) are raised as they are.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = list(base.blocks)
    failed: list[str] = []

    def guarded(block, compiled):
        def forward(*args, **kwargs):
            if not failed:
                try:
                    return compiled(*args, **kwargs)
                except TorchDynamoException as error:
                    failed.append(compile_failure_note(error))
                    for each in blocks:
                        each.__dict__.pop("forward", None)
                    if on_fallback is not None:
                        on_fallback(failed[0])
            return type(block).forward(block, *args, **kwargs)

        return forward

    for block in blocks:
        block.forward = guarded(block, torch.compile(block.forward, dynamic=True, backend=backend))


def compile_failure_note(error: Exception) -> str:
    """One line saying why compiling failed (the compiler's own error, when dynamo wrapped it)."""
    inner = getattr(error, "inner_exception", None) or error
    text = (str(inner).strip().splitlines() or [""])[0][:200]
    reason = f"{type(error).__name__}: {type(inner).__name__}: {text}"
    return f"torch.compile failed ({reason}); the blocks run eagerly"
