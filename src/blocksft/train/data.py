"""Training data: the run's item list, the dataset over it, and the padding collator.

An *item* is one (sample, epoch, block) the run trains on. The whole list is built up front by the
block schedule (:mod:`blocksft.schedule`): each epoch visits the samples in a seeded order, and a
blockwise sample trains on the block the schedule draws for it in that epoch (uniformly among its
unused blocks; a sample with none left stays as a loss-free row, as in the reference, unless
``drop_exhausted``). Every rank builds the same list and the Trainer's data loader hands each rank
different batches of it, so no two ranks ever see the same item, and N GPUs process the same
items as one. The list is a pure function of the config, which is what makes data order
resumable.

The collator pads a batch to its longest record rounded up to a multiple (8 by default), not to
``--max-len``; noising happens later, on the device, inside the Trainer's ``compute_loss``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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

    Attributes:
        pad_id: padding token (LLaDA: EOS).
        multiple_of: round the batch's longest record up to this.
        pad_to: pad every batch to this fixed length instead (the reference: ``--max-len``).
        supervise_padding: the padding is trained as answer (LLaDA's SFT recipe), so the
            attention mask covers it.
    """

    pad_id: int
    multiple_of: int = 8
    pad_to: int | None = None
    supervise_padding: bool = False

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([len(f["full_ids"]) for f in features])  # [B]
        longest = int(lengths.max())
        seq_len = self.pad_to if self.pad_to is not None else round_up(longest, self.multiple_of)
        seq_len = max(seq_len, longest)
        input_ids = torch.full((len(features), seq_len), self.pad_id, dtype=torch.long)  # [B, L]
        for row, f in enumerate(features):
            input_ids[row, : len(f["full_ids"])] = torch.as_tensor(f["full_ids"], dtype=torch.long)
        prompt_lens = torch.tensor([f["prompt_len"] for f in features])  # [B]
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
            # A plain int (stays on the host): seeds this batch's noise without a device sync.
            "first_item": int(features[0]["item"]),
        }
