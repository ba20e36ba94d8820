"""Benchmark: batched noising vs the reference's per-token Python masking and per-item tensors.

Run: ``blocksft bench noise [--batch-size 32 --max-len 256 --device cpu]``.

The baseline is what the reference training scripts do per training item
(:class:`~blocksft.reference.ReferenceBlockwiseDataset`, ``ReferenceFullSeqDataset``): keep a set
of unused blocks per sample and draw one with Python's ``random``; mask token by token in Python
lists; pad to ``max_len``; build tensors per item; stack them into a batch. Our path is the next
batch of the block schedule's plan, one padded batch tensor and one
:func:`~blocksft.objectives.noise_blockwise` call. Both run on the same synthetic examples in the
same process; the script prints the minimum and median milliseconds per batch and the ratios
(the minimum is the fair CPU-cost comparison on a busy machine, where the long reference calls get
preempted far more often than ours).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import numpy as np
import torch

from blocksft.config.flags import OneLineParser
from blocksft.data.records import answer_lengths
from blocksft.objectives import noise_blockwise, noise_fullseq, num_blocks
from blocksft.reference import (
    MASK_ID,
    PAD_ID,
    ReferenceBlockwiseDataset,
    ReferenceFullSeqDataset,
    reference_collate,
)
from blocksft.train.block_schedule import BlockSchedule


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
    schedule = BlockSchedule(num_blocks(answer_lengths(examples), args.block_size), seed=args.seed)
    plans = [schedule.plan(epoch) for epoch in range(schedule.epochs_to_cover)]
    plan_samples, plan_blocks = (np.concatenate(parts) for parts in zip(*plans))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    reference = {
        "blockwise": ReferenceBlockwiseDataset(examples, block_size=args.block_size, max_len=max_len),
        "fullseq": ReferenceFullSeqDataset(examples, max_len=max_len),
    }
    cursor = {"reference": 0, "ours": 0}

    def reference_batch(name):
        start = cursor["reference"] % (len(examples) - bs)
        cursor["reference"] += bs
        return reference_collate([reference[name][i] for i in range(start, start + bs)])

    def ours(name, prepared=None):
        if prepared is None:
            start = cursor["ours"] % (len(plan_samples) - bs)
            cursor["ours"] += bs
            input_ids, prompt, answer = pad_batch(
                [examples[i] for i in plan_samples[start : start + bs]], max_len
            )
            blocks = torch.as_tensor(plan_blocks[start : start + bs])
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

    first = schedule.plan(0)[0][:bs]
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
