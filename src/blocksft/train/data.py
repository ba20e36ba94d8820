"""Training data: the run's item list, the dataset over it, and the padding collator.

An *item* is one (sample, epoch, block) the run trains on. The whole list is built up front by the
block schedule (:mod:`blocksft.schedule`): each epoch visits the samples in a seeded order, and a
blockwise sample trains on the block the schedule draws for it in that epoch (uniformly among its
unused blocks; a sample with none left stays as a loss-free row, as in the reference, unless
``drop_exhausted``). Every rank builds the same list and the Trainer's data loader hands each rank
different batches of it, so no two ranks ever see the same item, and N GPUs process the same
items as one. The list is a pure function of the config, which is what makes data order
resumable.

With ``--group-by-length`` the list is reordered within windows of an epoch so that each
micro-batch holds records of similar length (:func:`group_by_length`); it stays a pure function of
the config. The collator pads a batch to its longest record rounded up to a multiple (8 by
default), not to ``--max-len`` (unless ``--pad-to-max-len``; see :class:`PadCollator` for supervised
padding); noising happens later, on the device, inside the Trainer's ``compute_loss``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from blocksft.errors import BlocksftError


@dataclass(frozen=True)
class Item:
    sample: int
    epoch: int
    block: int  # the active block (blockwise; -1: used up, no loss); 0 for full-sequence objectives


def plan_items(schedule, epochs: int, *, blockwise: bool) -> list[Item]:
    """Every item of the run, in training order.

    Args:
        schedule: a one-rank :class:`blocksft.schedule.BlockSchedule` over the samples (its
            seeded epoch order and per-epoch blocks; the Trainer's loader shards the list).
        epochs: passes over the samples; blockwise runs stop after the epoch that uses the last
            (sample, block) pair.
        blockwise: take blocks from the schedule; otherwise every item has block 0.
    """
    items = []
    for epoch in range(min(epochs, schedule.epochs_to_cover) if blockwise else epochs):
        if blockwise:
            samples, blocks = schedule.rank_plan(epoch, 0)
        else:
            samples = schedule.epoch_order(epoch)
            blocks = [0] * len(samples)
        items.extend(Item(int(s), epoch, int(b)) for s, b in zip(samples, blocks))
    return items


def group_by_length(
    items: Sequence[Item], lengths: Sequence[int], *, slice_size: int, window: int, seed: int
) -> list[Item]:
    """The items reordered so that each micro-batch holds records of similar length (less padding).

    The list is cut into windows: at most ``window`` consecutive items, never across an epoch
    (windows start at multiples of ``window`` and at epoch starts). Inside a window the items are
    sorted by record length, longest first, and dealt in runs to the window's slices (its positions
    between multiples of ``slice_size``, world size x micro-batch: one micro-batch of every rank),
    the slices taking their turn in a seeded random order, so that long and short batches alternate
    at random instead of the lengths falling through the window. Each epoch keeps exactly its items
    (every (sample, block) pair once, the same samples), only their order within windows changes;
    the result is a pure function of its arguments, so resuming and every rank get the same list.

    Args:
        items: the run's items in training order (already cut to the steps that run).
        lengths: record length (prompt + answer) of every sample.
        slice_size: world size x micro-batch (a multiple of it is ``window``).
        window: items per window (``--length-group-steps`` x samples per optimizer step).
        seed: the run's seed.
    """
    grouped = list(items)
    starts = {0, len(items)} | set(range(0, len(items), window))
    starts |= {k for k in range(1, len(items)) if items[k].epoch != items[k - 1].epoch}
    bounds = sorted(starts)
    for start, end in zip(bounds, bounds[1:]):
        by_length = sorted(range(start, end), key=lambda k: (-lengths[items[k].sample], k))
        cuts = [start, *range(-(-start // slice_size) * slice_size, end, slice_size), end]
        slices = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        taken = 0
        for k in np.random.default_rng([seed, start]).permutation(len(slices)):
            a, b = slices[k]
            grouped[a:b] = [items[j] for j in by_length[taken : taken + b - a]]
            taken += b - a
    return grouped


def steps_for(items: Sequence[Item], samples_per_step: int, total_steps: int | None) -> int:
    """Optimizer steps the items allow: each step takes exactly ``samples_per_step`` items.

    ``samples_per_step`` is world size x micro-batch x grad accumulation. The run ends at the step
    holding the last item with a block (the reference's early stop once every (sample, block) pair
    is used); an incomplete last step is dropped rather than filled with repeated items;
    ``total_steps`` caps the count.
    """
    live = [k for k, item in enumerate(items) if item.block >= 0]
    needed = live[-1] + 1 if live else 0
    steps = -(-needed // samples_per_step)
    if steps * samples_per_step > len(items):
        steps = len(items) // samples_per_step
    if steps == 0:
        raise BlocksftError(
            f"{needed} training items cannot fill one optimizer step of {samples_per_step} samples "
            "(world size x --micro-batch x --grad-accum): use more --max-samples or smaller batches"
        )
    return steps if total_steps is None else min(steps, total_steps)


def schedule_state_at(schedule, items: Sequence[Item], consumed: int) -> dict:
    """The block schedule's state once ``consumed`` items of the plan were trained on."""
    if consumed >= len(items):
        epoch = items[-1].epoch
        position = sum(item.epoch == epoch for item in items)
    else:
        epoch = items[consumed].epoch
        position = consumed - next(k for k, item in enumerate(items) if item.epoch == epoch)
    schedule.epoch, schedule.position = epoch, position
    return schedule.state_dict()


class ItemDataset(torch.utils.data.Dataset):
    """Item k of the plan as the record's ids, prompt length, block, sample and item index."""

    def __init__(self, records: Sequence[dict], items: Sequence[Item]):
        self.records, self.items = records, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        item = self.items[k]
        record = self.records[item.sample]
        return {
            "full_ids": record["full_ids"],
            "prompt_len": int(record["prompt_len"]),
            "block": item.block,
            "sample": item.sample,
            "item": k,
        }


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class PadCollator:
    """Right-pads records into a batch.

    The padded length: ``pad_to`` when given (and no record is longer); otherwise, with
    ``supervise_padding``, the batch's longest record exactly (LLaDA's SFT recipe: the EOS padding
    is answer, so its amount is not rounded) and, with ``complete_blocks``, at least the end of each
    row's last block (capped at ``max_len``), so that a blockwise sample's last block holds its
    answer's end followed by EOS whatever batch it lands in; otherwise the longest record rounded up
    to ``multiple_of``.

    Attributes:
        pad_id: padding token (LLaDA: EOS).
        multiple_of: round the batch's longest record up to this.
        pad_to: pad every batch to this fixed length instead (the reference: ``--max-len``).
        supervise_padding: the padding is trained as answer (LLaDA's SFT recipe), so the
            attention mask covers it.
        complete_blocks: the block size, to complete last blocks with supervised padding.
        max_len: the longest a completed block may make a row.
    """

    pad_id: int
    multiple_of: int = 8
    pad_to: int | None = None
    supervise_padding: bool = False
    complete_blocks: int | None = None
    max_len: int | None = None

    def padded_length(self, lengths: torch.Tensor, prompt_lens: torch.Tensor) -> int:
        """The batch's padded length for its ``[B]`` record and prompt lengths."""
        longest = int(lengths.max())
        if self.pad_to is not None:
            return max(self.pad_to, longest)
        if not self.supervise_padding:
            return round_up(longest, self.multiple_of)
        if self.complete_blocks is None:
            return longest
        size = self.complete_blocks
        block_ends = prompt_lens + (lengths - prompt_lens + size - 1) // size * size  # [B]
        if self.max_len is not None:
            block_ends = block_ends.clamp(max=self.max_len)
        return max(longest, int(block_ends.max()))

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([len(f["full_ids"]) for f in features])  # [B]
        prompt_lens = torch.tensor([f["prompt_len"] for f in features])  # [B]
        seq_len = self.padded_length(lengths, prompt_lens)
        input_ids = torch.full((len(features), seq_len), self.pad_id, dtype=torch.long)  # [B, L]
        for row, f in enumerate(features):
            input_ids[row, : len(f["full_ids"])] = torch.as_tensor(f["full_ids"], dtype=torch.long)
        visible = torch.full_like(lengths, seq_len) if self.supervise_padding else lengths
        attention_mask = (torch.arange(seq_len)[None, :] < visible[:, None]).long()  # [B, L]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prompt_lens": prompt_lens,
            "answer_lens": lengths - prompt_lens,
            "block_index": torch.tensor([f["block"] for f in features]),
            "sample_ids": torch.tensor([f["sample"] for f in features]),
            "item_ids": torch.tensor([f["item"] for f in features]),
            # Plain Python values (they stay on the host): the first seeds this batch's noise, the
            # second lets the step drop an all-ones attention mask, both without a device sync.
            "first_item": int(features[0]["item"]),
            "has_padding": bool((visible < seq_len).any()),
        }
