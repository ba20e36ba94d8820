"""The run's items: the list of what each step trains on, the dataset over it, the padding collator.

An *item* is one (sample, epoch, block) the run trains on. The whole list is built up front from
the block schedule (:mod:`blocksft.train.block_schedule`): each epoch visits the samples in a seeded
order, and a blockwise sample trains on the block the schedule draws for it in that epoch
(uniformly among its unused blocks; a sample with none left stays as a loss-free row, as in the
reference, unless ``drop_exhausted``). Every rank builds the same list and the Trainer's data
loader hands each rank different batches of it, so no two ranks ever see the same item, and N GPUs
process the same items as one. The list is a pure function of the config, which is what makes data
order resumable.

With ``--group-by-length`` the list is reordered within windows of an epoch so that each
micro-batch holds records of similar length (:func:`group_by_length`); it stays a pure function of
the config. The collator pads a batch to its longest record rounded up to a multiple (8 by
default), not to ``--max-len`` (unless ``--pad-to-max-len``; see :class:`PadCollator` for supervised
padding) into a :class:`TrainBatch`; noising happens later, on the device, inside the training step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from blocksft.config.train import TrainConfig, is_on
from blocksft.data.records import answer_lengths
from blocksft.errors import BlocksftError
from blocksft.objectives import Objective

from .block_schedule import BlockSchedule
from .engine import uses_gpu
from .logs import say
from .speed import resolve_grouping


@dataclass(frozen=True)
class Item:
    sample: int
    epoch: int
    block: int  # the active block (blockwise; -1: used up, no loss); 0 for full-sequence objectives


def plan_items(schedule, epochs: int, *, blockwise: bool) -> list[Item]:
    """Every item of the run, in training order.

    Args:
        schedule: the :class:`~blocksft.train.block_schedule.BlockSchedule` over the samples (its
            seeded epoch order and per-epoch blocks; the Trainer's loader shards the list).
        epochs: passes over the samples; blockwise runs stop after the epoch that uses the last
            (sample, block) pair.
        blockwise: take blocks from the schedule; otherwise every item has block 0.
    """
    items = []
    for epoch in range(min(epochs, schedule.epochs_to_cover) if blockwise else epochs):
        if blockwise:
            samples, blocks = schedule.plan(epoch)
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


def plan_position(items: Sequence[Item], consumed: int) -> tuple[int, int]:
    """``(epoch, position)``: where in the block schedule's epochs the run is once ``consumed``
    items of the plan were trained on (past the end: the last epoch's end)."""
    if consumed >= len(items):
        epoch = items[-1].epoch
        return epoch, sum(item.epoch == epoch for item in items)
    epoch = items[consumed].epoch
    return epoch, consumed - next(k for k, item in enumerate(items) if item.epoch == epoch)


# ----- The plan of a run ----------------------------------------------------------------------------


def plan_run(config: TrainConfig, objective: Objective, records: list[dict], world_size: int):
    """The block schedule, the items the run trains on (in order) and its optimizer steps (printed)."""
    schedule = block_schedule(config, objective, records)
    samples_per_step = world_size * config.micro_batch * config.grad_accum
    items = plan_items(schedule, config.epochs, blockwise=objective.blockwise)
    steps = steps_for(items, samples_per_step, config.total_steps)
    say(describe_plan(config, schedule, items, steps, samples_per_step, world_size))
    say(f"logs in {config.logs_dir}/, merged checkpoints in {config.ckpt_dir}_stepNNNN/")
    items = items[: steps * samples_per_step]
    if is_on(resolve_grouping(config, uses_gpu(config)).ran):  # run_train has resolved it already
        items = group_by_length(
            items,
            [len(r["full_ids"]) for r in records],
            slice_size=world_size * config.micro_batch,
            window=config.length_group_steps * samples_per_step,
            seed=config.seed,
        )
    return schedule, items, steps


def block_schedule(config: TrainConfig, objective: Objective, records: list[dict]) -> BlockSchedule:
    """The seeded block schedule over the records (the Trainer's loader shards the items it plans)."""
    prompt_lens = [int(r["prompt_len"]) for r in records]
    answer_lens = answer_lengths(records)
    fixed_len = config.max_len if config.pad_to_max_len else None
    counts = objective.block_counts(prompt_lens, answer_lens, max_len=fixed_len)
    return BlockSchedule(
        counts if counts is not None else [1] * len(records),
        seed=config.seed,
        shuffle=config.shuffle,
        drop_exhausted=config.drop_exhausted,
    )


def describe_plan(config, schedule, items, steps, samples_per_step, world_size) -> str:
    """What the run will do, and when its budget ends it early."""
    text = (
        f"{config.objective}: {schedule.num_samples:,} samples x {config.epochs} epoch(s); "
        f"{steps} optimizer steps of {samples_per_step} samples (world size {world_size} x micro-batch "
        f"{config.micro_batch} x grad-accum {config.grad_accum})"
    )
    if config.objective != "fullseq":
        used = sum(item.block >= 0 for item in items[: steps * samples_per_step])
        text += f"; {used:,} of {schedule.total_pairs:,} (sample, block) pairs"
        if used == schedule.total_pairs and config.epochs > schedule.epochs_to_cover:
            text += f": all used after epoch {schedule.epochs_to_cover}, so the run stops early there"
    return text


# ----- Batches ------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class TrainBatch:
    """One micro-batch, as :class:`PadCollator` makes it and the training step reads it.

    Attributes:
        input_ids: ``[B, L]`` long, right-padded records.
        attention_mask: ``[B, L]`` long, 1 where the model attends (padding too, when supervised).
        prompt_lens, answer_lens: ``[B]`` long, each record's prompt and true answer lengths.
        block_index: ``[B]`` long, the active block (-1: none left; 0 for the full-sequence objective).
        sample_ids: ``[B]`` long, each row's record; item_ids: ``[B]`` long, its index in the plan.
        first_item: the first row's item index, which seeds the batch's noise.
        has_padding: whether any position is left out of attention (without padding the mask can
            be dropped, so that SDPA may use its flash kernel).

    ``first_item`` and ``has_padding`` are plain Python values: they stay on the host, so reading
    them needs no device sync.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_lens: torch.Tensor
    answer_lens: torch.Tensor
    block_index: torch.Tensor
    sample_ids: torch.Tensor
    item_ids: torch.Tensor
    first_item: int
    has_padding: bool

    def to(self, device, non_blocking: bool = False) -> TrainBatch:
        """The batch with its tensors on ``device`` (data loaders call this to place it)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TrainBatch:
        """The batch in page-locked memory (the data loader's ``pin_memory`` calls this)."""
        return self._map(torch.Tensor.pin_memory)

    def _map(self, fn) -> TrainBatch:
        tensors = {
            f.name: fn(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **tensors)


@dataclass
class PadCollator:
    """Right-pads records into a batch.

    The padded length: ``pad_to`` when given (and no record is longer); otherwise, with
    ``supervise_padding``, the batch's longest record exactly (LLaDA's SFT recipe, applied to every
    family: the EOS padding is answer, so its amount is not rounded) and, with ``complete_blocks``,
    at least the end of each row's last block (capped at ``max_len``), so that a blockwise sample's
    last block holds its answer's end followed by EOS whatever batch it lands in; otherwise the
    longest record rounded up to ``multiple_of``.

    Attributes:
        pad_id: padding token (the tokenizer's pad, else EOS: LLaDA's and Dream's is EOS).
        multiple_of: round the batch's longest record up to this.
        pad_to: pad every batch to this fixed length instead (the reference: ``--max-len``).
        supervise_padding: the padding is trained as answer (LLaDA's SFT recipe, any family), so the
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

    def __call__(self, features: list[dict]) -> TrainBatch:
        lengths = torch.tensor([len(f["full_ids"]) for f in features])  # [B]
        prompt_lens = torch.tensor([f["prompt_len"] for f in features])  # [B]
        seq_len = self.padded_length(lengths, prompt_lens)
        input_ids = torch.full((len(features), seq_len), self.pad_id, dtype=torch.long)  # [B, L]
        for row, f in enumerate(features):
            input_ids[row, : len(f["full_ids"])] = torch.as_tensor(f["full_ids"], dtype=torch.long)
        visible = torch.full_like(lengths, seq_len) if self.supervise_padding else lengths
        attention_mask = (torch.arange(seq_len)[None, :] < visible[:, None]).long()  # [B, L]
        return TrainBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            prompt_lens=prompt_lens,
            answer_lens=lengths - prompt_lens,
            block_index=torch.tensor([f["block"] for f in features]),
            sample_ids=torch.tensor([f["sample"] for f in features]),
            item_ids=torch.tensor([f["item"] for f in features]),
            first_item=int(features[0]["item"]),
            has_padding=bool((visible < seq_len).any()),
        )
