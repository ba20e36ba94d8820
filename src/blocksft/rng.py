"""Random sources: one seed per batch, and generators checked against the data's device.

Training noise and evaluation sampling draw from an explicit ``torch.Generator`` per batch, seeded
by :func:`batch_seed` from the run's seed and the batch's first item: the same batch gets the same
draws however the run was split (resumed, sharded over ranks, batched differently before it).
"""

from __future__ import annotations

import torch

from blocksft.errors import BlocksftError


def batch_seed(seed: int, first_index: int) -> int:
    """Seed of one batch's draws: the run seed and the index of the batch's first item (training:
    its position in the run's item list; evaluation: its first problem's or request's index).
    Unique per batch for indices below 2**32, the same after a resume, different on every rank."""
    return (seed % (1 << 31)) * (1 << 32) + first_index


def check_generator(
    generator: torch.Generator | None, device: torch.device, holder: str = "the batch"
) -> None:
    """Refuse a generator on another kind of device than ``holder`` (torch would fail mid-way).

    Raises:
        BlocksftError: naming both devices and how to create the right generator.
    """
    if generator is not None and generator.device.type != device.type:
        raise BlocksftError(
            f"the generator is on {generator.device} but {holder} is on {device}: "
            f"create it with torch.Generator(device={str(device)!r})"
        )
