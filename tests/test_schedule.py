"""The block schedule: every (sample, block) exactly once over the epochs, uniform, a pure function of
the seed; a resumable state is refused for other data or settings."""

import collections
import itertools
import json

import numpy as np
import pytest

from blocksft.errors import BlocksftError
from blocksft.train.block_schedule import BlockSchedule
from blocksft.train.items import Item, plan_position

COUNTS = [3, 1, 0, 5, 2, 2, 4, 1, 7, 3, 0, 1, 6]  # includes samples with no block at all


@pytest.mark.parametrize("drop", [False, True])
def test_every_pair_exactly_once_across_epochs(drop):
    schedule = BlockSchedule(COUNTS, seed=5, drop_exhausted=drop)
    epochs = [schedule.plan(epoch) for epoch in range(schedule.epochs_to_cover)]
    pairs = [(int(i), int(b)) for samples, blocks in epochs for i, b in zip(samples, blocks) if b >= 0]
    expected = [(i, b) for i, n in enumerate(COUNTS) for b in range(n)]
    assert sorted(pairs) == expected  # all pairs, none twice
    assert schedule.total_pairs == len(expected)
    # after the epoch that uses the last pair nothing is left to train on
    assert (schedule.plan(schedule.epochs_to_cover)[1] == -1).all()


def test_each_sample_once_per_epoch_exhausted_ones_with_block_minus_one():
    schedule = BlockSchedule(COUNTS, seed=3)
    for epoch in range(schedule.epochs_to_cover + 1):
        samples, blocks = schedule.plan(epoch)
        live = [int(i) for i, b in zip(samples, blocks) if b >= 0]
        assert sorted(live) == [i for i, n in enumerate(COUNTS) if n > epoch]
        assert sorted(samples.tolist()) == list(range(len(COUNTS)))  # exhausted samples stay, block -1


def test_drop_exhausted_leaves_them_out():
    schedule = BlockSchedule(COUNTS, seed=3, drop_exhausted=True)
    samples, blocks = schedule.plan(2)
    assert sorted(samples.tolist()) == [i for i, n in enumerate(COUNTS) if n > 2] and (blocks >= 0).all()


def test_deterministic_given_seed_and_epoch():
    a = BlockSchedule(COUNTS, seed=9)
    b = BlockSchedule(COUNTS, seed=9)
    c = BlockSchedule(COUNTS, seed=10)
    for epoch in range(4):
        assert all(np.array_equal(x, y) for x, y in zip(a.plan(epoch), b.plan(epoch)))
    assert any(not np.array_equal(a.plan(e)[0], c.plan(e)[0]) for e in range(4))
    # the block of a sample does not depend on the visiting order
    single = BlockSchedule(COUNTS, seed=9, shuffle=False)
    for epoch in range(3):
        samples, blocks = a.plan(epoch)
        assert np.array_equal(single.blocks(samples, epoch), blocks)


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


def test_the_plan_position_of_a_step_counts_items_within_its_epoch():
    items = [Item(sample=k % 3, epoch=k // 3, block=0) for k in range(7)]  # epochs of 3, 3 and 1 items
    assert [plan_position(items, consumed) for consumed in (0, 2, 3, 5, 6)] == [
        (0, 0),
        (0, 2),
        (1, 0),
        (1, 2),
        (2, 0),
    ]
    assert (
        plan_position(items, 7) == plan_position(items, 100) == (2, 1)
    )  # past the end: the last epoch's end


def test_state_for_other_data_or_settings_is_refused():
    state = json.loads(json.dumps(BlockSchedule(COUNTS, seed=4).state(1, 3)))
    assert (state["epoch"], state["position"]) == (1, 3)
    BlockSchedule(COUNTS, seed=4).check_state(state)  # the same plan: accepted
    with pytest.raises(BlocksftError, match="num_blocks_sha256"):
        BlockSchedule(COUNTS[:-1] + [2], seed=4).check_state(state)
    with pytest.raises(BlocksftError, match="seed=4"):
        BlockSchedule(COUNTS, seed=5).check_state(state)
    with pytest.raises(BlocksftError, match="drop_exhausted=False"):
        BlockSchedule(COUNTS, seed=4, drop_exhausted=True).check_state(state)
    with pytest.raises(BlocksftError, match="not a block schedule state"):
        BlockSchedule(COUNTS, seed=4).check_state({"epoch": 0})


def test_bad_arguments():
    with pytest.raises(BlocksftError, match="at least one sample"):
        BlockSchedule([], seed=0)
    with pytest.raises(BlocksftError, match=">= 0"):
        BlockSchedule([1, -1], seed=0)
