"""What a decode returns (:class:`GenerateOutput`) and what a step callback sees (:class:`GenerateStep`),
shared by the loop sampler and the fixed-shape decoders."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GenerateStep:
    """What a ``callback`` sees after every step.

    Attributes:
        block: index of the block being decoded; step: index of the step within the block;
            step_index: index of the step in the whole run (as in ``GenerateOutput.commit_step``).
        canvas: ``[B, P + G]`` the live canvas (read it, clone it to keep it, never modify it).
        committed: ``[B, P + G]`` bool, positions committed at this step.
        block_done: the current block has no mask left in any row being decoded.
        nfe: model evaluations so far.
    """

    block: int
    step: int
    step_index: int
    canvas: torch.Tensor
    committed: torch.Tensor
    block_done: bool
    nfe: int


@dataclass
class GenerateOutput:
    """Result of :func:`generate`.

    Attributes:
        sequences: ``[B, P + G]`` long, the prompt (as given, left padding kept) and the generation.
        nfe: model evaluations (forward passes; classifier-free guidance counts 2 per step).
        prompt_length: ``P``, where the generation starts in every row.
        num_tokens: ``[B]`` generated tokens before the first EOS/EoT (``G`` when none).
        commit_step: ``[B, G]`` the 0-based step (counted over the whole run) that committed each
            generated token; -1 for tokens filled with EOS by ``stop_at_eos``.
        forward_tokens: (row, position) pairs run through the model, summed over forwards: the
            compute that caches save (their NFE equals the plain sampler's).
        row_nfe: ``[B]`` the forwards each row needed (what it costs decoded alone), with the
            fixed-shape decoders (``decode`` other than ``loop``); None with the loop.
    """

    sequences: torch.Tensor
    nfe: int
    prompt_length: int
    num_tokens: torch.Tensor
    commit_step: torch.Tensor
    forward_tokens: int
    row_nfe: torch.Tensor | None = None

    @property
    def generated(self) -> torch.Tensor:
        """``[B, G]`` the generated part of every row."""
        return self.sequences[:, self.prompt_length :]
