"""Training data: the run's item list, the dataset over it, and the padding collator.

An *item* is one (sample, epoch, block) the run trains on. The whole list is built up front from
the seed: each epoch visits the samples in a seeded order, and a blockwise sample trains on the
block the block schedule gives it for that epoch (a sample whose blocks are used up is skipped,
so the list ends early once every (sample, block) pair has been used, as the reference stops).
Every rank builds the same list and the Trainer's data loader hands each rank different batches
of it, so no two ranks ever see the same item, and N GPUs process the same items as one. The list
is a pure function of the config, which is what makes data order resumable.

The collator pads a batch to its longest record rounded up to a multiple (8 by default), not to
``--max-len``; noising happens later, on the device, inside the Trainer's ``compute_loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from blocksft.errors import BlocksftError


@dataclass(frozen=True)
class Item:
    sample: int
    epoch: int
    block: int  # the active block (blockwise); 0 for full-sequence objectives


def epoch_order(n_samples: int, epoch: int, *, seed: int, shuffle: bool) -> list[int]:
    """The order samples are visited in ``epoch``: a seeded permutation, the same on every rank."""
    if not shuffle:
        return list(range(n_samples))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_samples, generator=generator).tolist()


def plan_items(
    n_samples: int,
    epochs: int,
    *,
    seed: int,
    shuffle: bool,
    block_for: Callable[[int, int], int] | None = None,
) -> list[Item]:
    """Every item of the run, in training order.

    Args:
        n_samples: number of records used.
        epochs: passes over them.
        seed, shuffle: the per-epoch order (:func:`epoch_order`).
        block_for: ``(sample, epoch) -> block``, negative when the sample has no block left;
            ``None`` for full-sequence objectives (every sample in every epoch).
    """
    items = []
    for epoch in range(epochs):
        for sample in epoch_order(n_samples, epoch, seed=seed, shuffle=shuffle):
            block = 0 if block_for is None else block_for(sample, epoch)
            if block >= 0:
                items.append(Item(sample, epoch, block))
    return items


def steps_for(n_items: int, samples_per_step: int, total_steps: int | None) -> int:
    """Optimizer steps the items allow: each step takes exactly ``samples_per_step`` items.

    ``samples_per_step`` is world size x micro-batch x grad accumulation; an incomplete last step
    is dropped (so no rank ever repeats an item to fill it); ``total_steps`` caps the count.
    """
    steps = n_items // samples_per_step
    if steps == 0:
        raise BlocksftError(
            f"{n_items} training items cannot fill one optimizer step of {samples_per_step} samples "
            "(world size x --micro-batch x --grad-accum): use more --max-samples or smaller batches"
        )
    return steps if total_steps is None else min(steps, total_steps)


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
    """Right-pads records into a batch; padding is never noised and never carries loss.

    Attributes:
        pad_id: padding token (LLaDA: EOS).
        multiple_of: round the batch's longest record up to this.
        pad_to: pad every batch to this fixed length instead (the reference: ``--max-len``).
        supervise_padding: the padding counts as answer (LLaDA's SFT recipe): ``answer_lens``
            reaches the padded end and the attention mask covers the padding.
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
        if self.supervise_padding:
            lengths = torch.full_like(lengths, seq_len)
        prompt_lens = torch.tensor([f["prompt_len"] for f in features])  # [B]
        attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()  # [B, L]
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
