"""The block schedule: every (sample, block) exactly once over epochs and ranks, uniform, resumable."""

import collections
import itertools
import json

import numpy as np
import pytest

from blocksft.errors import BlocksftError
from blocksft.schedule import BlockSchedule

COUNTS = [3, 1, 0, 5, 2, 2, 4, 1, 7, 3, 0, 1, 6]  # includes samples with no block at all


def run_all_ranks(counts, *, world_size, batch_size, **kwargs):
    """Step every rank in lockstep until all pairs are used; returns per-rank batches and schedules."""
    schedules = [
        BlockSchedule(counts, seed=5, rank=r, world_size=world_size, **kwargs) for r in range(world_size)
    ]
    batches = [[] for _ in range(world_size)]
    while not schedules[0].all_used:
        for rank, schedule in enumerate(schedules):
            batches[rank].append(schedule.next_batch(batch_size))
        assert len({s.pairs_used() for s in schedules}) == 1  # every rank agrees without communication
    return batches, schedules


@pytest.mark.parametrize(
    "world_size,batch_size,drop", [(1, 4, False), (3, 2, False), (4, 3, True), (2, 5, True)]
)
def test_every_pair_exactly_once_across_epochs_and_ranks(world_size, batch_size, drop):
    batches, schedules = run_all_ranks(
        COUNTS, world_size=world_size, batch_size=batch_size, drop_exhausted=drop
    )
    pairs = [
        (int(i), int(b))
        for rank_batches in batches
        for batch in rank_batches
        for i, b in zip(batch.samples, batch.blocks)
        if b >= 0
    ]
    expected = [(i, b) for i, n in enumerate(COUNTS) for b in range(n)]
    assert sorted(pairs) == expected  # all pairs, none twice (also not on two ranks)
    assert schedules[0].total_pairs == len(expected) == schedules[0].pairs_used()
    # ranks step in lockstep with equal batch sizes; the early stop comes when predicted
    assert len({len(b) for b in batches}) == 1
    for step in zip(*batches):
        assert len({len(b.samples) for b in step}) == 1
    assert len(batches[0]) == schedules[0].steps_to_cover(batch_size)


def test_each_sample_once_per_epoch_on_exactly_one_rank():
    schedules = [BlockSchedule(COUNTS, seed=3, rank=r, world_size=3) for r in range(3)]
    for epoch in range(schedules[0].epochs_to_cover + 1):
        plans = [s.rank_plan(epoch) for s in schedules]
        live = [int(i) for samples, blocks in plans for i, b in zip(samples, blocks) if b >= 0]
        visited = [int(i) for samples, blocks in plans for i in samples]
        assert sorted(live) == [i for i, n in enumerate(COUNTS) if n > epoch]
        assert set(visited) == set(range(len(COUNTS)))  # exhausted samples stay, with block -1
        assert len({len(samples) for samples, _ in plans}) == 1


def test_drop_exhausted_leaves_them_out_and_refuses_to_go_on():
    schedule = BlockSchedule(COUNTS, seed=3, drop_exhausted=True)
    samples, blocks = schedule.rank_plan(2)
    assert sorted(samples.tolist()) == [i for i, n in enumerate(COUNTS) if n > 2] and (blocks >= 0).all()
    while not schedule.all_used:
        schedule.next_batch(4)
    with pytest.raises(BlocksftError, match="every \\(sample, block\\) pair was used"):
        schedule.next_batch(4)


def test_keep_mode_goes_on_with_loss_free_rows_after_all_pairs():
    schedule = BlockSchedule([1, 2], seed=0, shuffle=False)
    first, second = schedule.next_batch(2), schedule.next_batch(2)
    assert (first.blocks >= 0).all() and second.blocks[0] == -1 and second.blocks[1] >= 0
    assert schedule.all_used
    batch = schedule.next_batch(2)
    assert batch.epoch == 2 and batch.blocks.tolist() == [-1, -1] and batch.samples.tolist() == [0, 1]


def test_deterministic_given_seed_epoch_rank():
    a = BlockSchedule(COUNTS, seed=9, rank=1, world_size=2)
    b = BlockSchedule(COUNTS, seed=9, rank=1, world_size=2)
    c = BlockSchedule(COUNTS, seed=10, rank=1, world_size=2)
    for epoch in range(4):
        assert all(np.array_equal(x, y) for x, y in zip(a.rank_plan(epoch), b.rank_plan(epoch)))
    assert any(not np.array_equal(a.rank_plan(e)[0], c.rank_plan(e)[0]) for e in range(4))
    # the block of a sample does not depend on the rank, the world size or the visiting order
    single = BlockSchedule(COUNTS, seed=9, shuffle=False)
    for epoch in range(3):
        samples, blocks = a.rank_plan(epoch)
        live = len(a.epoch_order(epoch)[1::2])  # the rest is padding with block -1
        assert np.array_equal(single.blocks(samples[:live], epoch), blocks[:live])


def test_blocks_are_uniform_permutations():
    n_samples = 6000
    schedule = BlockSchedule([3] * n_samples, seed=1)
    perms = np.stack([schedule.blocks(np.arange(n_samples), e) for e in range(3)], axis=1)
    assert (np.sort(perms, axis=1) == np.arange(3)).all()  # without replacement
    counts = collections.Counter(map(tuple, perms.tolist()))
    assert set(counts) == set(itertools.permutations(range(3)))
    expected = n_samples / 6
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 20.5  # p = 0.001 for 5 degrees of freedom
    # the visiting order is a fresh permutation each epoch
    assert not np.array_equal(schedule.epoch_order(0), schedule.epoch_order(1))
    assert sorted(schedule.epoch_order(1).tolist()) == list(range(n_samples))


def test_restored_schedule_continues_identically():
    def stream(schedule, steps):
        return [
            (b.epoch, b.samples.tolist(), b.blocks.tolist())
            for b in (schedule.next_batch(3) for _ in range(steps))
        ]

    uninterrupted = BlockSchedule(COUNTS, seed=4, rank=1, world_size=2)
    expected = stream(uninterrupted, 12)
    first = BlockSchedule(COUNTS, seed=4, rank=1, world_size=2)
    head = stream(first, 5)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = BlockSchedule(COUNTS, seed=4, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert resumed.pairs_used() == first.pairs_used()
    assert head + stream(resumed, 7) == expected


def test_state_for_other_data_or_settings_is_refused():
    state = BlockSchedule(COUNTS, seed=4, world_size=2).state_dict()
    with pytest.raises(BlocksftError, match="num_blocks_sha256"):
        BlockSchedule(COUNTS[:-1] + [2], seed=4, world_size=2).load_state_dict(state)
    with pytest.raises(BlocksftError, match="seed=4"):
        BlockSchedule(COUNTS, seed=5, world_size=2).load_state_dict(state)
    moved = BlockSchedule(COUNTS, seed=4, world_size=2)
    moved.next_batch(2)
    with pytest.raises(BlocksftError, match="resume with 2 ranks"):
        BlockSchedule(COUNTS, seed=4, world_size=4).load_state_dict(moved.state_dict())
    BlockSchedule(COUNTS, seed=4, world_size=4).load_state_dict(state)  # at an epoch boundary it is fine
    with pytest.raises(BlocksftError, match="not a block schedule state"):
        BlockSchedule(COUNTS, seed=4).load_state_dict({"epoch": 0})


def test_bad_arguments():
    with pytest.raises(BlocksftError, match="rank 2"):
        BlockSchedule(COUNTS, seed=0, rank=2, world_size=2)
    with pytest.raises(BlocksftError, match="at least one sample"):
        BlockSchedule([], seed=0)
    with pytest.raises(BlocksftError, match=">= 0"):
        BlockSchedule([1, -1], seed=0)
