"""The training objectives by name, their options, and the ranges those options may take.

:class:`ObjectiveOptions` is what :func:`blocksft.objectives.get_objective` builds an objective from;
its fields are the objective knobs of :class:`blocksft.config.train.TrainConfig` (whose help text
explains them; ``eps`` is ``--mask-eps``). Their ranges are checked here once, by
:func:`check_noise_options` and :func:`check_loss_options`, for the training config, the options
and the noising functions alike.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Literal, get_args

from blocksft.config.flags import flag_name
from blocksft.errors import BlocksftError

ObjectiveName = Literal["blockwise", "fullseq", "blockwise_visible_suffix"]
LossWeighting = Literal["none", "inv_p"]
LossNormalize = Literal["per_sample_masked", "answer_len", "batch_tokens", "batch_masked"]


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    """A registry entry: ``suffix_mask_prob`` is the objective's fixed value, or its default if free."""

    name: str
    blockwise: bool
    description: str
    suffix_mask_prob: float | None = 1.0
    suffix_fixed: bool = False


OBJECTIVES = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            ObjectiveSpec(
                "blockwise", True, "Blockwise SFT (the paper): one block, clean prefix, hidden suffix"
            ),
            ObjectiveSpec(
                "fullseq", False, "classical masked SFT over the whole answer", suffix_mask_prob=None
            ),
            ObjectiveSpec(
                "blockwise_visible_suffix",
                True,
                "blockwise loss with the future visible (suffix_mask_prob 0)",
                suffix_mask_prob=0.0,
                suffix_fixed=True,
            ),
        )
    }
)


def check_noise_options(
    *, eps: float, prefix_mask_rate: float = 0.0, suffix_mask_prob: float = 1.0, spell=flag_name
) -> None:
    """Raise :class:`BlocksftError` naming the option (``spell(field name)``) when a noising option
    is out of range.

    ``eps`` (``--mask-eps``) may be 1.0 (every token of the active block masked: ``U(1, 1)``), never
    0, which would let a row's mask rate be 0; the two rates are probabilities.
    """
    if not 0.0 < eps <= 1.0:
        raise BlocksftError(f"{spell('mask_eps')} must be in (0, 1], got {eps}")
    for name, value in (("prefix_mask_rate", prefix_mask_rate), ("suffix_mask_prob", suffix_mask_prob)):
        if not 0.0 <= value <= 1.0:
            raise BlocksftError(f"{spell(name)} must be in [0, 1], got {value}")


def check_loss_options(weighting: str, normalize: str, spell=flag_name) -> None:
    """Raise :class:`BlocksftError` naming the option (``spell(field name)``) when a loss option is
    unknown."""
    if weighting not in get_args(LossWeighting):
        raise BlocksftError(
            f"{spell('loss_weighting')} must be one of {get_args(LossWeighting)}, got {weighting!r}"
        )
    if normalize not in get_args(LossNormalize):
        raise BlocksftError(
            f"{spell('loss_normalize')} must be one of {get_args(LossNormalize)}, got {normalize!r}"
        )


@dataclasses.dataclass(frozen=True)
class ObjectiveOptions:
    """The knobs of an objective (see :func:`blocksft.objectives.get_objective` for which apply to
    which, and :class:`~blocksft.config.train.TrainConfig` for what each one means)."""

    mask_id: int
    block_size: int = 32
    eps: float = 1e-3
    prefix_mask_rate: float = 0.0
    suffix_mask_prob: float = 1.0
    supervise_padding: bool = False
    loss_weighting: LossWeighting = "none"
    loss_normalize: LossNormalize = "per_sample_masked"

    def __post_init__(self):
        if self.mask_id < 0:
            raise BlocksftError(f"--mask-id must be a token id >= 0, got {self.mask_id}")
        if self.block_size < 1:
            raise BlocksftError(f"--block-size must be at least 1, got {self.block_size}")
        check_noise_options(
            eps=self.eps, prefix_mask_rate=self.prefix_mask_rate, suffix_mask_prob=self.suffix_mask_prob
        )
        check_loss_options(self.loss_weighting, self.loss_normalize)


def available_objectives() -> list[str]:
    """The objective names ``--objective`` takes."""
    return list(OBJECTIVES)
