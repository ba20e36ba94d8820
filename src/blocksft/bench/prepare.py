"""Benchmark `blocksft prepare`: batched rendering + tokenization against the reference's row loop.

Both paths turn the same rows into records in the same process, and must produce identical records.
The baseline is the reference ``pt.py`` loop (one ``apply_chat_template`` + one tokenizer call per
text, per row; :func:`blocksft.reference.reference_prepare`), with its transformers-5 ``len()`` bug
fixed so that its records can be compared.
There is no real LLaDA tokenizer on a machine without downloads, so the tokenizer is a byte-level
BPE with LLaDA's special tokens and chat template (:func:`blocksft.tokenizer.build_tokenizer`),
trained on the first rows with a realistic vocabulary size::

    PYTHONPATH=src python -m blocksft bench prepare            # GSM8K train, 7,473 rows
    PYTHONPATH=src python -m blocksft bench prepare --rows 2000 --num-proc 1 2
"""

from __future__ import annotations

import os
import platform
import resource
import time
from functools import partial
from pathlib import Path

from blocksft.config.flags import OneLineParser
from blocksft.config.prepare import ALPACA_PROMPT, PrepareConfig
from blocksft.data.prepare import build_records
from blocksft.data.prompts import encode_texts, render_conversation_texts
from blocksft.data.tasks import open_dataset
from blocksft.errors import BlocksftError
from blocksft.reference import reference_prepare
from blocksft.tokenizer import build_tokenizer


def default_data() -> Path:
    """GSM8K train.jsonl in a ``shared/data/gsm8k`` folder beside the checkout (or above it)."""
    for folder in Path(__file__).resolve().parents:
        candidate = folder / "shared" / "data" / "gsm8k" / "train.jsonl"
        if candidate.is_file():
            return candidate
    return Path("shared/data/gsm8k/train.jsonl")


def _encode_full_texts_only(dataset, tokenizer, template: str) -> None:
    """Render and encode every row's full conversation once, in one batch: what any exact path costs."""
    encode_texts(
        tokenizer, render_conversation_texts(tokenizer, dataset["question"], dataset["answer"], template)
    )


def _same_records(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["prompt_len"] == y["prompt_len"] and x["full_ids"].equal(y["full_ids"]) for x, y in zip(a, b)
    )


def _cpu_seconds() -> float:
    # This process (all its threads) and its finished children (datasets.map workers).
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _measure(paths: dict, repeats: int) -> dict:
    """Best wall and CPU seconds of each path, the paths taking turns so that load drifts hit all."""
    best = {name: [float("inf"), float("inf"), None] for name in paths}
    for _ in range(repeats):
        for name, run in paths.items():
            wall, cpu = time.perf_counter(), _cpu_seconds()
            result = run()
            wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
            best[name] = [min(best[name][0], wall), min(best[name][1], cpu), result]
    return best


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="blocksft bench prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(default_data()), help="JSONL with question/answer rows")
    parser.add_argument("--rows", type=int, default=0, help="use the first N rows (0 = all)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="vocabulary of the benchmark tokenizer")
    parser.add_argument("--tokenizer-rows", type=int, default=3000, help="rows the tokenizer is trained on")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1], help="datasets.map processes to try")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="report the best of N runs of each path")
    args = parser.parse_args(argv)
    if not Path(args.data).is_file():
        raise BlocksftError(f"--data {args.data} does not exist (GSM8K train.jsonl expected)")
    dataset = open_dataset(args.data, flag="--data")
    if args.rows:
        dataset = dataset.select(range(min(args.rows, len(dataset))))
    corpus = [q + "\n" + a for q, a in zip(dataset["question"][: args.tokenizer_rows], dataset["answer"])]
    tokenizer = build_tokenizer(corpus, args.vocab_size)
    n = len(dataset)
    print(f"blocksft bench prepare: {n} rows of {args.data}")
    print(
        f"tokenizer: byte-level BPE with LLaDA's special tokens and chat template, vocab {len(tokenizer)}, "
        f"trained on the first {min(args.tokenizer_rows, n)} rows (no real LLaDA tokenizer here)"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {platform.python_version()}"
    )

    paths = {
        "reference loop (one row at a time)": lambda: reference_prepare(
            dataset, tokenizer, ALPACA_PROMPT, "question", "answer", args.max_len
        )
    }
    for num_proc in args.num_proc:
        config = PrepareConfig(
            dataset=args.data,
            query_field="question",
            response_field="answer",
            filter_type="",
            max_len=args.max_len,
            max_samples=0,
            num_proc=num_proc,
        )
        paths[f"blocksft prepare (num_proc {num_proc})"] = partial(build_records, dataset, tokenizer, config)
    paths["floor: render + encode full texts only"] = partial(
        _encode_full_texts_only, dataset, tokenizer, ALPACA_PROMPT
    )
    timings = _measure(paths, args.repeats)
    (base_wall, base_cpu, expected), *_ = timings.values()
    print(f"  {'path':<40}{'rows/s':>9} {'ratio':>7} {'rows/CPU-s':>11} {'ratio':>7}")
    for name, (wall, cpu, result) in timings.items():
        records = result if isinstance(result, list) or result is None else result.records
        if records is not None and not _same_records(records, expected):
            raise BlocksftError(f"{name} produced different records from the reference loop")
        print(f"  {name:<40}{n / wall:9.0f} {base_wall / wall:6.2f}x {n / cpu:11.0f} {base_cpu / cpu:6.2f}x")
    print(f"records identical on every path: {len(expected)} kept of {n} (max_len {args.max_len})")
    print(
        "the last line is no way to prepare data: it encodes each full text once and builds nothing, "
        "a floor that shows how much of the time is the tokenizer's own work"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
