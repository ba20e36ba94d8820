"""An objective with its options, what the trainer calls once per batch; objectives by name.

The names, their fixed options and the options' ranges are configuration
(:mod:`blocksft.config.objective`); here they become the noising and the loss.
"""

from __future__ import annotations

import dataclasses

import torch

from blocksft.config.objective import OBJECTIVES, ObjectiveOptions
from blocksft.errors import BlocksftError
from blocksft.objectives.loss import loss_weights, masked_ce_loss
from blocksft.objectives.noise import (
    Lengths,
    NoisedBatch,
    as_lengths,
    noise_blockwise,
    noise_fullseq,
    num_blocks,
    supervised_span_lens,
)


@dataclasses.dataclass(frozen=True)
class Objective:
    """A named objective with its options: what the trainer calls once per batch.

    ``blockwise`` objectives need a block per row (from
    :class:`blocksft.train.block_schedule.BlockSchedule`, whose block counts are :meth:`block_counts`);
    the full-sequence one ignores blocks, except that a row with block -1 (no block) is left clean
    with no loss.
    """

    name: str
    blockwise: bool
    options: ObjectiveOptions

    def block_counts(self, prompt_lens: Lengths, answer_lens: Lengths, *, max_len: int | None = None):
        """Blocks of each sample, for the schedule (``None`` for the full-sequence objective).

        Blocks cover the true answer. With ``supervise_padding`` and ``max_len`` (every batch padded
        to that fixed length, ``--pad-to-max-len``) the answer runs to ``max_len``, so the blocks of
        EOS padding are trained too. With per-batch padding the padded length is unknown when the
        schedule is planned: blocks stay those of the true answer, and the collator completes
        each row's last block with EOS (:class:`blocksft.train.items.PadCollator`).
        """
        if not self.blockwise:
            return None
        answer = torch.as_tensor(answer_lens, dtype=torch.long)
        if self.options.supervise_padding and max_len is not None:
            answer = max_len - torch.as_tensor(prompt_lens, dtype=torch.long)
        return num_blocks(answer, self.options.block_size).tolist()

    def noise(
        self,
        input_ids: torch.Tensor,
        prompt_lens: Lengths,
        answer_lens: Lengths,
        block_index: Lengths | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> NoisedBatch:
        """Noise a right-padded batch ``[B, L]``; ``block_index`` ``[B]`` is required when blockwise."""
        o = self.options
        common = dict(
            mask_id=o.mask_id, eps=o.eps, supervise_padding=o.supervise_padding, generator=generator
        )
        if self.blockwise:
            if block_index is None:
                raise ValueError(f"objective {self.name!r} needs a block_index per row (from the schedule)")
            return noise_blockwise(
                input_ids,
                prompt_lens,
                answer_lens,
                block_index,
                block_size=o.block_size,
                prefix_mask_rate=o.prefix_mask_rate,
                suffix_mask_prob=o.suffix_mask_prob,
                **common,
            )
        active = None
        if block_index is not None:
            active = as_lengths(block_index, input_ids.shape[0], input_ids.device, "block_index") >= 0
        return noise_fullseq(input_ids, prompt_lens, answer_lens, active=active, **common)

    def span_lens(self, prompt_lens: Lengths, answer_lens: Lengths, *, seq_len: int, block_index=None):
        """``[B]`` maskable span of each row (see :func:`supervised_span_lens`)."""
        blockwise = self.blockwise and block_index is not None
        lens = supervised_span_lens(
            prompt_lens,
            answer_lens,
            seq_len=seq_len,
            supervise_padding=self.options.supervise_padding,
            block_index=block_index if blockwise else None,
            block_size=self.options.block_size,
        )
        if block_index is not None and not self.blockwise:
            active = as_lengths(block_index, lens.numel(), lens.device, "block_index") >= 0
            lens = torch.where(active, lens, 0)
        return lens

    def loss(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        noised: NoisedBatch,
        *,
        prompt_lens: Lengths,
        answer_lens: Lengths,
        block_index: Lengths | None = None,
    ) -> torch.Tensor:
        """:func:`masked_ce_loss` with this objective's weighting and normalisation.

        ``logits`` dense ``[B, L, V]`` or selected ``[N, V]`` at ``noised.loss_mask``.
        """
        options = self._loss_options(noised, prompt_lens, answer_lens, block_index)
        return masked_ce_loss(logits, targets, noised.loss_mask, **options)

    def loss_weights(
        self,
        noised: NoisedBatch,
        *,
        prompt_lens: Lengths,
        answer_lens: Lengths,
        block_index: Lengths | None = None,
    ) -> torch.Tensor:
        """``[N]`` weights of the loss positions: :meth:`loss` is ``sum_i w_i * CE_i`` (see
        :func:`loss_weights`), for computing the head and the CE in chunks."""
        options = self._loss_options(noised, prompt_lens, answer_lens, block_index)
        return loss_weights(noised.loss_mask, **options)

    def _loss_options(self, noised: NoisedBatch, prompt_lens, answer_lens, block_index) -> dict:
        """The keyword arguments of :func:`masked_ce_loss` / :func:`loss_weights` for a batch."""
        o = self.options
        spans = None
        if o.loss_normalize in ("answer_len", "batch_tokens"):
            seq_len = noised.loss_mask.shape[1]
            spans = self.span_lens(prompt_lens, answer_lens, seq_len=seq_len, block_index=block_index)
        return dict(p=noised.p, weighting=o.loss_weighting, normalize=o.loss_normalize, answer_lens=spans)


def get_objective(
    name: str,
    *,
    mask_id: int,
    prefix_mask_rate: float = 0.0,
    suffix_mask_prob: float | None = None,
    **options,
) -> Objective:
    """Build the objective ``name`` (``blockwise``, ``fullseq``, ``blockwise_visible_suffix``).

    Args:
        name: the objective.
        mask_id: the mask token id.
        prefix_mask_rate: the answer prefix's mask rate (blockwise objectives only).
        suffix_mask_prob: None takes the objective's value (1.0 for ``blockwise``, 0.0 for
            ``blockwise_visible_suffix``).
        options: the other fields of :class:`~blocksft.config.objective.ObjectiveOptions`
            (``block_size``, ``eps``, ``supervise_padding``, ``loss_weighting``, ``loss_normalize``),
            at its defaults when left out.

    Options that cannot apply are errors: a prefix or suffix setting with ``fullseq``, a non-zero
    suffix probability with ``blockwise_visible_suffix``.
    """
    if name not in OBJECTIVES:
        raise BlocksftError(f"unknown --objective {name!r}; available: {', '.join(OBJECTIVES)}")
    spec = OBJECTIVES[name]
    if not spec.blockwise:
        if prefix_mask_rate != 0.0 or suffix_mask_prob is not None:
            raise BlocksftError(
                f"--prefix-mask-rate and --suffix-mask-prob apply to blockwise objectives, "
                f"not to --objective {name}"
            )
        suffix_mask_prob = 1.0
    elif suffix_mask_prob is None:
        suffix_mask_prob = spec.suffix_mask_prob
    elif spec.suffix_fixed and suffix_mask_prob != spec.suffix_mask_prob:
        raise BlocksftError(
            f"--objective {name} fixes --suffix-mask-prob {spec.suffix_mask_prob}; for another value use "
            f"--objective blockwise --suffix-mask-prob {suffix_mask_prob}"
        )
    options = ObjectiveOptions(
        mask_id=mask_id, prefix_mask_rate=prefix_mask_rate, suffix_mask_prob=suffix_mask_prob, **options
    )
    return Objective(name, spec.blockwise, options)
