"""Benchmark `blocksft prepare`: batched rendering + tokenization against the reference's row loop.

Both paths turn the same rows into records in the same process, and must produce identical records.
The baseline is the reference ``pt.py`` loop (one ``apply_chat_template`` + one tokenizer call per
text, per row), with its transformers-5 ``len()`` bug fixed so that its records can be compared.
There is no real LLaDA tokenizer on a machine without downloads, so the tokenizer is a byte-level
BPE with LLaDA's special tokens and chat template (:func:`blocksft.tokenizer.build_tokenizer`),
trained on the first rows with a realistic vocabulary size::

    PYTHONPATH=src python -m blocksft bench prepare            # GSM8K train, 7,473 rows
    PYTHONPATH=src python -m blocksft bench prepare --rows 2000 --num-proc 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path


def default_data() -> Path:
    """GSM8K train.jsonl in a ``shared/data/gsm8k`` folder beside the checkout (or above it)."""
    for folder in Path(__file__).resolve().parents:
        candidate = folder / "shared" / "data" / "gsm8k" / "train.jsonl"
        if candidate.is_file():
            return candidate
    return Path("shared/data/gsm8k/train.jsonl")


def reference_loop(dataset, tokenizer, template: str, query_field: str, response_field: str, max_len: int):
    """The reference ``pt.py`` loop: one row at a time, one call per render and per encoding."""
    import torch

    from blocksft.data.prompts import fill_prompt
    from blocksft.tokenizer import ASSISTANT_HEADER

    records = []
    for row in dataset:
        user = [{"role": "user", "content": fill_prompt(template, row[query_field])}]
        conversation = user + [{"role": "assistant", "content": row[response_field]}]
        full_text = tokenizer.apply_chat_template(conversation, tokenize=False)[: -len(ASSISTANT_HEADER)]
        full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
        prompt_len = len(tokenizer.apply_chat_template(user, tokenize=True, return_dict=False))
        if len(full_ids) > max_len:
            continue
        records.append({"prompt_len": prompt_len, "full_ids": torch.tensor(full_ids, dtype=torch.long)})
    return records


def _tokenize_only(dataset, tokenizer, template: str) -> float:
    from blocksft.data.prompts import encode_texts, render_conversation_texts, render_prompt_texts

    queries, answers = dataset["question"], dataset["answer"]
    texts = render_prompt_texts(tokenizer, queries, template)
    texts += render_conversation_texts(tokenizer, queries, answers, template, appends_header=True)
    start = time.perf_counter()
    encode_texts(tokenizer, texts)
    return time.perf_counter() - start


def _same_records(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["prompt_len"] == y["prompt_len"] and x["full_ids"].equal(y["full_ids"]) for x, y in zip(a, b)
    )


def _best_of(repeats: int, fn):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blocksft bench prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(default_data()), help="JSONL with question/answer rows")
    parser.add_argument("--rows", type=int, default=0, help="use the first N rows (0 = all)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="vocabulary of the benchmark tokenizer")
    parser.add_argument("--tokenizer-rows", type=int, default=3000, help="rows the tokenizer is trained on")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1], help="datasets.map processes to try")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="report the best of N runs of each path")
    args = parser.parse_args(argv)

    from blocksft.data.prepare import PrepareConfig, build_records
    from blocksft.data.prompts import ALPACA_PROMPT
    from blocksft.data.tasks import open_dataset
    from blocksft.errors import BlocksftError
    from blocksft.tokenizer import build_tokenizer

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

    base_time, expected = _best_of(
        args.repeats,
        lambda: reference_loop(dataset, tokenizer, ALPACA_PROMPT, "question", "answer", args.max_len),
    )
    print(f"  reference loop (one row at a time)      {n / base_time:9.0f} rows/s   1.00x")
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
        ours_time, result = _best_of(args.repeats, lambda c=config: build_records(dataset, tokenizer, c))
        if not _same_records(result.records, expected):
            raise BlocksftError("the batched path produced different records from the reference loop")
        label = f"blocksft prepare (batched, num_proc {num_proc})"
        print(f"  {label:<40}{n / ours_time:9.0f} rows/s  {base_time / ours_time:5.2f}x")
    print(f"records identical on both paths: {len(expected)} kept of {n} (max_len {args.max_len})")
    floor_time = min(_tokenize_only(dataset, tokenizer, ALPACA_PROMPT) for _ in range(args.repeats))
    label = "tokenizer alone (same texts, 1 batch)"
    print(f"  {label:<40}{n / floor_time:9.0f} rows/s  {base_time / floor_time:5.2f}x")
    print(
        "    (the ceiling for any path that encodes the prompt and the full text of every row: "
        "rendering, the map and the records excluded)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
