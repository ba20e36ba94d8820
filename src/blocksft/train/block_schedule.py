"""Which block each sample trains on in each epoch, and the order the samples are visited in.

The reference keeps a set of unused block indices per sample and, each time the data loader asks for
a sample, draws one of them uniformly and removes it; a sample with no block left is still returned,
clean and without loss (block -1); training stops early once every (sample, block) pair was used.
That mutates the dataset (``num_workers=0``), cannot resume and depends on the visiting order.

Here the block of sample ``i`` in epoch ``e`` is ``perm(seed, i)[e]``, where ``perm(seed, i)`` is a
random permutation of the sample's ``n_i`` blocks derived from a hash of ``(seed, i, j)``; for
``e >= n_i`` the sample is exhausted (block -1). Reading a uniformly random permutation in order is
drawing uniformly among the unused blocks without replacement, as the reference does, but the draw
needs no state: it is a pure function of the seed, the sample and the epoch.

Each epoch visits every sample once, in an order shuffled by ``(seed, epoch)``; exhausted samples
stay in the epoch with block -1 (the reference's behaviour: they dilute the batch mean) unless
``drop_exhausted=True``. :meth:`BlockSchedule.plan` gives an epoch's ``(samples, blocks)``; the run's
item list (:mod:`blocksft.train.items`) is built from it up front, every rank builds the same list
and the Trainer's loader hands each rank different batches of it. A resumable state records where
in the plan it was saved (:meth:`BlockSchedule.state`), with what the plan is valid for, so that a
resume on other data or settings is refused (:meth:`BlockSchedule.check_state`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from blocksft.errors import BlocksftError

STATE_FORMAT = "blocksft.schedule/1"  # the tag resumable states carry (unchanged: old states resume)
_MASK64 = (1 << 64) - 1
_STREAM_BLOCKS = 1  # hash streams: block permutations and epoch orders never share keys
_STREAM_ORDER = 2
# What a saved state must share with this run's schedule (the position is checked by the caller).
_IDENTITY = ("seed", "shuffle", "drop_exhausted", "num_samples", "num_blocks_sha256")


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective, well-mixing map of uint64 (wraps modulo 2**64)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_keys(seed: int, stream: int, a, b) -> np.ndarray:
    """Pseudo-random uint64 keys for ``(seed, stream, a, b)``, broadcast over arrays ``a`` and ``b``."""
    with np.errstate(over="ignore"):
        head = _mix(np.array([(seed & _MASK64) ^ (stream << 56)], dtype=np.uint64))
        return _mix(_mix(head ^ np.asarray(a, dtype=np.uint64)) ^ np.asarray(b, dtype=np.uint64))


class BlockSchedule:
    """The (sample, block) plan of a run: a pure function of the seed, the sample and the epoch.

    Args:
        num_blocks: blocks of every sample (``objectives.num_blocks(answer_lens, block_size)``).
        seed: the run's seed.
        shuffle: visit samples in a random order each epoch (the reference shuffles); False keeps
            dataset order.
        drop_exhausted: leave samples without blocks out of later epochs instead of returning them
            with block -1 (the reference returns them).
    """

    def __init__(
        self, num_blocks: Sequence[int], *, seed: int, shuffle: bool = True, drop_exhausted: bool = False
    ):
        self.num_blocks = np.asarray(num_blocks, dtype=np.int64).reshape(-1)
        if self.num_blocks.size == 0:
            raise BlocksftError("the block schedule needs at least one sample")
        if (self.num_blocks < 0).any():
            raise BlocksftError("block counts must be >= 0")
        self.seed, self.shuffle, self.drop_exhausted = int(seed), bool(shuffle), bool(drop_exhausted)

    @property
    def num_samples(self) -> int:
        return len(self.num_blocks)

    @property
    def total_pairs(self) -> int:
        """Number of (sample, block) pairs; training has used them all after :attr:`epochs_to_cover`."""
        return int(self.num_blocks.sum())

    @property
    def epochs_to_cover(self) -> int:
        """Epochs until every pair was used: the largest block count."""
        return int(self.num_blocks.max(initial=0))

    def blocks(self, samples, epoch: int) -> np.ndarray:
        """Block of each of ``samples`` in ``epoch``: ``perm(seed, i)[epoch]``, or -1 when exhausted."""
        samples = np.asarray(samples, dtype=np.int64).reshape(-1)
        counts = self.num_blocks[samples]  # [S]
        width = int(counts.max(initial=0))
        if epoch >= width:
            return np.full(len(samples), -1, dtype=np.int64)
        j = np.arange(width, dtype=np.int64)[None, :]  # [1, W]
        keys = hash_keys(self.seed, _STREAM_BLOCKS, samples[:, None], j)  # [S, W]
        keys[j >= counts[:, None]] = np.iinfo(np.uint64).max  # padding columns sort last
        perm = np.argsort(keys, axis=1, kind="stable")  # [S, W]: a uniform permutation per row
        return np.where(epoch < counts, perm[:, epoch], -1)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The samples of ``epoch``, in visiting order."""
        order = np.arange(self.num_samples, dtype=np.int64)
        if self.shuffle:
            order = np.argsort(hash_keys(self.seed, _STREAM_ORDER, epoch, order), kind="stable")
        if self.drop_exhausted:
            order = order[self.num_blocks[order] > epoch]
        return order

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(samples, blocks)`` of ``epoch``: the visiting order and each sample's block (-1: none)."""
        samples = self.epoch_order(epoch)
        return samples, self.blocks(samples, epoch)

    def _fingerprint(self) -> str:
        return hashlib.sha256(self.num_blocks.tobytes()).hexdigest()[:16]

    def state(self, epoch: int, position: int) -> dict:
        """A resumable state's record of the plan: where it stopped (``position`` items into
        ``epoch``) and what the plan is valid for; JSON-serialisable."""
        return {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "position": position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_exhausted": self.drop_exhausted,
            "num_samples": self.num_samples,
            "num_blocks_sha256": self._fingerprint(),
        }

    def check_state(self, saved: dict) -> None:
        """Refuse a state saved for other data or settings than this schedule's.

        Raises:
            BlocksftError: naming the first setting that differs.
        """
        if saved.get("format") != STATE_FORMAT:
            raise BlocksftError(f"not a block schedule state (format {saved.get('format')!r})")
        ours = self.state(0, 0)
        for key in _IDENTITY:
            if saved[key] != ours[key]:
                raise BlocksftError(
                    f"the saved block schedule has {key}={saved[key]!r} but this run has {ours[key]!r}; "
                    "resume with the same data, block size, seed and schedule flags"
                )
