"""Benchmark: batched noising vs the reference's per-token Python masking and per-item tensors.

Run: ``blocksft bench noise [--batch-size 32 --max-len 256 --device cpu]`` (or ``python bench/noise.py``).

The baseline re-implements, from its description, what the reference training scripts do per
training item: keep a set of unused blocks per sample and draw one with Python's ``random``; mask
token by token in Python lists; pad to ``max_len``; build tensors per item; stack them into a batch.
:class:`ReferenceBlockwiseDataset` and :class:`ReferenceFullSeqDataset` are reusable as that baseline
(e.g. by the training-step benchmark). Our path is the schedule lookup, one padded batch tensor and
one :func:`~blocksft.objectives.noise_blockwise` call. Both run on the same synthetic examples in the
same process; the script prints the minimum and median milliseconds per batch and the ratios
(the minimum is the fair CPU-cost comparison on a busy machine, where the long reference calls get
preempted far more often than ours).
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import statistics
import time

import torch

from blocksft.config import OneLineParser
from blocksft.objectives import noise_blockwise, noise_fullseq, num_blocks
from blocksft.schedule import BlockSchedule

MASK_ID = 126336
PAD_ID = 126081


class ReferenceBlockwiseDataset(torch.utils.data.Dataset):
    """The reference's blockwise training item, per-token Python and all (the baseline).

    Each sample keeps a set of unused block indices; ``__getitem__`` draws one uniformly from it and
    removes it (mutating the dataset); an exhausted sample comes back clean, without loss, block -1.
    Masking: prefix tokens at ``prefix_mask_rate``, active-block tokens at ``p ~ U(eps, 1)`` (those
    carry loss), suffix tokens with ``suffix_mask_prob`` (no draws at exactly 0 or 1), each token by
    its own ``random.random()``; then right padding to ``max_len`` and tensors per item.
    """

    def __init__(
        self,
        examples: list[dict],
        *,
        block_size: int = 32,
        max_len: int = 256,
        mask_id: int = MASK_ID,
        pad_id: int = PAD_ID,
        eps: float = 1e-3,
        prefix_mask_rate: float = 0.0,
        suffix_mask_prob: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 42,
    ):
        self.examples = examples[rank::world_size]
        self.block_size, self.max_len = block_size, max_len
        self.mask_id, self.pad_id = mask_id, pad_id
        self.eps, self.prefix_mask_rate, self.suffix_mask_prob = eps, prefix_mask_rate, suffix_mask_prob
        self.rng = random.Random(seed)
        self.unused = []
        for example in self.examples:
            answer_len = max(min(len(example["full_ids"]), max_len) - int(example["prompt_len"]), 0)
            self.unused.append(set(range(math.ceil(answer_len / block_size))))
        self.remaining = sum(len(blocks) for blocks in self.unused)

    def __len__(self) -> int:
        return len(self.examples)

    def _mask(self, ids: list[int], prompt_len: int, block: int) -> tuple[list[int], list[bool]]:
        rng, end = self.rng, len(ids)
        noisy, flags = list(ids), [False] * end
        block_start = prompt_len + block * self.block_size
        block_end = min(block_start + self.block_size, end)
        if self.prefix_mask_rate > 0.0:
            for pos in range(prompt_len, min(block_start, end)):
                if rng.random() < self.prefix_mask_rate:
                    noisy[pos] = self.mask_id
        p = rng.uniform(self.eps, 1.0)
        for pos in range(block_start, block_end):
            if rng.random() < p:
                noisy[pos] = self.mask_id
                flags[pos] = True
        if self.suffix_mask_prob >= 1.0:
            for pos in range(block_end, end):
                noisy[pos] = self.mask_id
        elif self.suffix_mask_prob > 0.0:
            for pos in range(block_end, end):
                if rng.random() < self.suffix_mask_prob:
                    noisy[pos] = self.mask_id
        return noisy, flags

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.examples[index]
        ids = example["full_ids"].tolist()[: self.max_len]
        prompt_len = min(int(example["prompt_len"]), len(ids))
        unused = self.unused[index]
        if unused:
            block = self.rng.choice(tuple(unused))
            unused.remove(block)
            self.remaining -= 1
            noisy, flags = self._mask(ids, prompt_len, block)
        else:
            block, noisy, flags = -1, list(ids), [False] * len(ids)
        return _padded_item(
            ids, noisy, flags, self.max_len, self.pad_id, blk_index=block, prompt_len=prompt_len
        )


class ReferenceFullSeqDataset(torch.utils.data.Dataset):
    """The reference's full-sequence training item: every answer token masked at ``p ~ U(eps, 1)``."""

    def __init__(
        self,
        examples: list[dict],
        *,
        max_len: int = 256,
        mask_id: int = MASK_ID,
        pad_id: int = PAD_ID,
        eps: float = 1e-3,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 42,
    ):
        self.examples = examples[rank::world_size]
        self.max_len, self.mask_id, self.pad_id, self.eps = max_len, mask_id, pad_id, eps
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.examples[index]
        ids = example["full_ids"].tolist()[: self.max_len]
        prompt_len = min(int(example["prompt_len"]), len(ids))
        p = self.rng.uniform(self.eps, 1.0)
        noisy, flags = list(ids), [False] * len(ids)
        for pos in range(prompt_len, len(ids)):
            if self.rng.random() < p:
                noisy[pos] = self.mask_id
                flags[pos] = True
        return _padded_item(ids, noisy, flags, self.max_len, self.pad_id)


def _padded_item(ids, noisy, flags, max_len, pad_id, **extra) -> dict[str, torch.Tensor]:
    """Right-pad the per-item lists to ``max_len`` and make one tensor per field (as the reference)."""
    pad = max_len - len(ids)
    item = {
        "input_ids": torch.tensor(ids + [pad_id] * pad, dtype=torch.long),
        "noisy_ids": torch.tensor(noisy + [pad_id] * pad, dtype=torch.long),
        "mask_flags": torch.tensor(flags + [False] * pad, dtype=torch.bool),
    }
    item.update({key: torch.tensor(value, dtype=torch.long) for key, value in extra.items()})
    return item


def reference_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack every field of the per-item dicts (the reference's collate function)."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def synthetic_examples(count: int, *, max_len: int = 256, seed: int = 0, vocab: int = 126000) -> list[dict]:
    """Records shaped like MetaMathQA's (prompt 60-140 tokens, answer 40-190, total <= max_len),
    with random ids in ``[0, vocab)``."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(count):
        prompt_len = rng.randint(min(60, max_len // 4), min(140, max_len // 2))
        answer_len = rng.randint(min(40, max_len - prompt_len), max_len - prompt_len)
        ids = torch.randint(0, vocab, (prompt_len + answer_len,), dtype=torch.long, generator=generator)
        examples.append({"prompt_len": prompt_len, "full_ids": ids})
    return examples


def pad_batch(examples: list[dict], max_len: int, pad_id: int = PAD_ID):
    """Our collation: one ``[B, max_len]`` tensor and the ``[B]`` prompt and answer lengths."""
    rows = [example["full_ids"] for example in examples]
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id)
    input_ids = torch.nn.functional.pad(input_ids, (0, max_len - input_ids.shape[1]), value=pad_id)
    prompt_lens = torch.tensor([int(example["prompt_len"]) for example in examples])
    answer_lens = torch.tensor([len(row) for row in rows]) - prompt_lens
    return input_ids, prompt_lens, answer_lens


def _times_ms(fn, repeats: int, sync) -> tuple[float, float]:
    """``(min, median)`` milliseconds per call; the minimum is the cost without preemption."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times), statistics.median(times)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="blocksft bench noise", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=50, help="batches timed per path")
    parser.add_argument("--device", default="cpu", help="device of our path (the reference is CPU Python)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    bs, max_len = args.batch_size, args.max_len
    examples = synthetic_examples(bs * (args.repeats + 1), max_len=max_len, seed=args.seed)
    answer_lens = [len(e["full_ids"]) - e["prompt_len"] for e in examples]
    schedule = BlockSchedule(num_blocks(answer_lens, args.block_size), seed=args.seed)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    reference = {
        "blockwise": ReferenceBlockwiseDataset(examples, block_size=args.block_size, max_len=max_len),
        "fullseq": ReferenceFullSeqDataset(examples, max_len=max_len),
    }
    cursor = {"reference": 0}

    def reference_batch(name):
        start = cursor["reference"] % (len(examples) - bs)
        cursor["reference"] += bs
        return reference_collate([reference[name][i] for i in range(start, start + bs)])

    def ours(name, prepared=None):
        if prepared is None:
            batch = schedule.next_batch(bs)
            input_ids, prompt, answer = pad_batch([examples[i] for i in batch.samples], max_len)
            blocks = torch.as_tensor(batch.blocks)
            input_ids, prompt, answer, blocks = (t.to(device) for t in (input_ids, prompt, answer, blocks))
        else:
            input_ids, prompt, answer, blocks = prepared
        if name == "fullseq":
            return noise_fullseq(input_ids, prompt, answer, mask_id=MASK_ID, generator=generator)
        return noise_blockwise(
            input_ids,
            prompt,
            answer,
            blocks,
            block_size=args.block_size,
            mask_id=MASK_ID,
            generator=generator,
        )

    first = schedule.rank_plan(0)[0][:bs]
    prepared = pad_batch([examples[i] for i in first], max_len)
    prepared = tuple(t.to(device) for t in (*prepared, torch.as_tensor(schedule.blocks(first, 0))))
    for name in reference:  # warm-up
        reference_batch(name), ours(name), ours(name, prepared)
    sync()

    print(
        f"noise benchmark: batch {bs} x {max_len}, block {args.block_size}, our path on {device}, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} batches"
    )
    print(f"{'objective':<10} {'path':<46} {'min ms':>8} {'median ms':>10} {'speed-up (min, median)':>24}")
    for name in reference:
        base = _times_ms(lambda name=name: reference_batch(name), args.repeats, lambda: None)
        rows = [
            ("reference: per-token Python + per-item tensors", base),
            (
                "ours: schedule + pad + noise (end to end)",
                _times_ms(lambda n=name: ours(n), args.repeats, sync),
            ),
            (
                "ours: noise only (batch already padded)",
                _times_ms(lambda n=name: ours(n, prepared), args.repeats, sync),
            ),
        ]
        for label, (best, median) in rows:
            ratios = f"{base[0] / best:.1f}x, {base[1] / median:.1f}x"
            print(f"{name:<10} {label:<46} {best:>8.3f} {median:>10.3f} {ratios:>24}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
