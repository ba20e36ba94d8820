"""Which (sample, block) each training step uses: seeded, stateless in its draws, resumable, rank-aware.

The reference keeps a set of unused block indices per sample and, each time the data loader asks for
a sample, draws one of them uniformly and removes it; a sample with no block left is still returned,
clean and without loss (block -1); training stops early once every (sample, block) pair was used.
That mutates the dataset (``num_workers=0``), cannot resume and depends on the visiting order.

Here the block of sample ``i`` in epoch ``e`` is ``perm(seed, i)[e]``, where ``perm(seed, i)`` is a
random permutation of the sample's ``n_i`` blocks derived from a hash of ``(seed, i, j)``; for
``e >= n_i`` the sample is exhausted (block -1). Reading a uniformly random permutation in order is
drawing uniformly among the unused blocks without replacement, as the reference does, but the draw
needs no state: it is the same on every rank, after a resume and in any data-loader worker.

Each epoch visits every sample once, in an order shuffled by ``(seed, epoch)``, sharded over ranks
as ``order[rank::world_size]``; every rank gets the same number of entries (the short ones are padded
with block -1 rows, which carry no loss), so ranks step in lockstep and two ranks never draw the same
(sample, block). Exhausted samples stay in the epoch with block -1 (the reference's behaviour: they
dilute the batch mean) unless ``drop_exhausted=True``. The only state is a cursor ``(epoch,
position)``, identical on all ranks, from which the number of pairs used so far (over all ranks) is
computed exactly: no all-reduce is needed for the early stop.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from blocksft.errors import BlocksftError

STATE_FORMAT = "blocksft.schedule/1"
_MASK64 = (1 << 64) - 1
_STREAM_BLOCKS = 1  # hash streams: block permutations and epoch orders never share keys
_STREAM_ORDER = 2


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


@dataclasses.dataclass(frozen=True)
class ScheduledBatch:
    """A rank's micro-batch: ``samples`` (dataset indices) and their ``blocks`` (-1: no loss)."""

    samples: np.ndarray
    blocks: np.ndarray
    epoch: int


class BlockSchedule:
    """The (sample, block) plan of one data-parallel rank.

    Args:
        num_blocks: blocks of every sample (``objectives.num_blocks(answer_lens, block_size)``).
        seed: the run's seed.
        rank: this process's data-parallel rank.
        world_size: the number of data-parallel ranks.
        shuffle: visit samples in a random order each epoch (the reference shuffles); False keeps
            dataset order.
        drop_exhausted: leave samples without blocks out of later epochs instead of returning them
            with block -1 (the reference returns them).
    """

    def __init__(
        self,
        num_blocks: Sequence[int],
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_exhausted: bool = False,
    ):
        self.num_blocks = np.asarray(num_blocks, dtype=np.int64).reshape(-1)
        if self.num_blocks.size == 0:
            raise BlocksftError("the block schedule needs at least one sample")
        if (self.num_blocks < 0).any():
            raise BlocksftError("block counts must be >= 0")
        if not 0 <= rank < world_size:
            raise BlocksftError(f"rank {rank} is outside [0, world_size={world_size})")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.shuffle, self.drop_exhausted = bool(shuffle), bool(drop_exhausted)
        self.epoch, self.position = 0, 0
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._plan_cache: tuple[int, int, np.ndarray, np.ndarray] | None = None

    # ----- the stateless plan -----

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
        """All ranks' samples of ``epoch``, in visiting order (rank ``r`` takes ``[r::world_size]``)."""
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        order = np.arange(self.num_samples, dtype=np.int64)
        if self.shuffle:
            order = np.argsort(hash_keys(self.seed, _STREAM_ORDER, epoch, order), kind="stable")
        if self.drop_exhausted:
            order = order[self.num_blocks[order] > epoch]
        self._order_cache = (epoch, order)
        return order

    def epoch_length(self, epoch: int) -> int:
        """Entries per rank in ``epoch`` (equal on all ranks)."""
        return -(-len(self.epoch_order(epoch)) // self.world_size)

    def rank_plan(self, epoch: int, rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(samples, blocks)`` of a rank (default: this one) in ``epoch``, padded with block -1 rows."""
        rank = self.rank if rank is None else rank
        if self._plan_cache is not None and self._plan_cache[:2] == (epoch, rank):
            return self._plan_cache[2:]
        order = self.epoch_order(epoch)
        samples = order[rank :: self.world_size]
        blocks = self.blocks(samples, epoch)
        missing = self.epoch_length(epoch) - len(samples)
        if missing > 0:  # pad with clean, loss-free rows so every rank takes as many steps
            samples = np.concatenate([samples, order[:missing]])
            blocks = np.concatenate([blocks, np.full(missing, -1, dtype=np.int64)])
        self._plan_cache = (epoch, rank, samples, blocks)
        return samples, blocks

    def pairs_used(self, epoch: int | None = None, position: int | None = None) -> int:
        """Pairs used by all ranks before the cursor ``(epoch, position)`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        position = self.position if position is None else position
        done = int(np.minimum(self.num_blocks, epoch).sum())
        # the first `position` entries of every rank are the first position * world_size of the order
        seen = self.epoch_order(epoch)[: position * self.world_size]
        return done + int((self.num_blocks[seen] > epoch).sum())

    def steps_to_cover(self, batch_size: int) -> int:
        """Micro-batches (of :meth:`next_batch`) until every pair was used (the reference's early stop)."""
        steps = 0
        for epoch in range(self.epochs_to_cover):
            order = self.epoch_order(epoch)
            if epoch < self.epochs_to_cover - 1:
                steps += -(-self.epoch_length(epoch) // batch_size)
            else:  # the last epoch ends, for the early stop, at the batch holding the last live pair
                last = np.flatnonzero(self.num_blocks[order] > epoch)[-1]
                steps += -(-(last // self.world_size + 1) // batch_size)
        return steps

    # ----- the cursor -----

    @property
    def all_used(self) -> bool:
        """True once every (sample, block) pair was used: the reference stops training then."""
        return self.pairs_used() >= self.total_pairs

    def next_batch(self, batch_size: int) -> ScheduledBatch:
        """This rank's next micro-batch; an epoch's last batch may be smaller (no ``drop_last``)."""
        if batch_size < 1:
            raise BlocksftError(f"batch size must be at least 1, got {batch_size}")
        if self.position >= self.epoch_length(self.epoch):
            if self.drop_exhausted and self.all_used:
                raise BlocksftError("every (sample, block) pair was used; stop training (all_used)")
            self.epoch, self.position = self.epoch + 1, 0
        samples, blocks = self.rank_plan(self.epoch)
        end = min(self.position + batch_size, len(samples))
        batch = ScheduledBatch(samples[self.position : end], blocks[self.position : end], self.epoch)
        self.position = end
        return batch

    def _fingerprint(self) -> str:
        return hashlib.sha256(self.num_blocks.tobytes()).hexdigest()[:16]

    def state_dict(self) -> dict:
        """The cursor and what it is only valid for; JSON-serialisable, identical on every rank."""
        return {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "drop_exhausted": self.drop_exhausted,
            "num_samples": self.num_samples,
            "num_blocks_sha256": self._fingerprint(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`; refuses a state made for other data or settings.

        A different world size is accepted only at an epoch boundary (``position == 0``).
        """
        if state.get("format") != STATE_FORMAT:
            raise BlocksftError(f"not a block schedule state (format {state.get('format')!r})")
        ours = self.state_dict()
        for key in ("seed", "shuffle", "drop_exhausted", "num_samples", "num_blocks_sha256"):
            if state[key] != ours[key]:
                raise BlocksftError(
                    f"the saved block schedule has {key}={state[key]!r} but this run has {ours[key]!r}; "
                    "resume with the same data, block size, seed and schedule flags"
                )
        if state["world_size"] != self.world_size and state["position"] != 0:
            raise BlocksftError(
                f"the saved block schedule ran on {state['world_size']} ranks and stopped mid-epoch; "
                f"resume with {state['world_size']} ranks"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
