"""Training objectives as pure tensor functions: noising, the masked cross-entropy loss, token counts.

Two objectives, both batched over ``[B, L]`` right-padded rows, on any device, in one vectorised
pass whose only randomness is an explicit ``torch.Generator`` (on the tensors' device):

* :func:`noise_blockwise` (Blockwise SFT, arXiv 2508.19529): the answer ``[prompt_len, prompt_len +
  answer_len)`` is cut into ``block_size`` blocks aligned at the answer start (the last one may be
  partial). In the sample's active block each token is masked i.i.d. at ``p ~ U(eps, 1)`` and only
  those masked tokens carry loss; the answer before the block (prefix) is clean, or masked at
  ``prefix_mask_rate``; the answer after it (suffix) is masked with probability ``suffix_mask_prob``
  (1.0: hidden, the paper; 0.0: visible). Prefix and suffix never carry loss.
* :func:`noise_fullseq` (classical masked SFT): every answer token masked i.i.d. at ``p ~ U(eps, 1)``,
  all masked answer tokens carry loss.

The prompt is never masked. Padding (positions ``>= prompt_len + answer_len``) is never masked nor
supervised, unless ``supervise_padding=True`` (LLaDA's SFT recipe, dLLM): then each row's answer runs
to the end of the row, so its EOS padding is noised and trained like answer tokens (and the length of
the answer no longer shows through the unmasked padding).

:func:`masked_ce_loss` is the reference's loss by default (mean over samples of the per-sample mean
CE over loss tokens, no ``1/p``) with the variants the paper's ablations and its reviewers ask for.
:func:`get_objective` selects ``blockwise`` / ``fullseq`` / ``blockwise_visible_suffix`` by name.

Layout: ``noise`` (the noising functions), ``loss`` (the loss), ``budget`` (token and FLOP counts),
``objective`` (an objective with its options, by name). The names, the options and their ranges
are configuration (:mod:`blocksft.config.objective`). The functions are importable from
``blocksft.objectives``.
"""

from blocksft.objectives.budget import TokenCounts, count_tokens, forward_flops, training_step_flops
from blocksft.objectives.loss import linear_cross_entropy, loss_weights, masked_ce_loss
from blocksft.objectives.noise import (
    NoisedBatch,
    noise_blockwise,
    noise_fullseq,
    num_blocks,
    supervised_span_lens,
)
from blocksft.objectives.objective import Objective, get_objective

__all__ = [
    "NoisedBatch",
    "Objective",
    "TokenCounts",
    "count_tokens",
    "forward_flops",
    "get_objective",
    "linear_cross_entropy",
    "loss_weights",
    "masked_ce_loss",
    "noise_blockwise",
    "noise_fullseq",
    "num_blocks",
    "supervised_span_lens",
    "training_step_flops",
]
