"""The GPU check: every GPU figure of bench/RESULTS.md in one run of under nine minutes on one H100/H200.

    PYTHONPATH=src python bench/gpu_check.py             # from the repository root, one CUDA GPU
    PYTHONPATH=src python bench/gpu_check.py --family dream   # the same sections at Dream-7B's shape
    PYTHONPATH=src python bench/gpu_check.py --tiny      # the same code on CPU with a tiny shape (tests)

Nothing is downloaded: the models are random, at LLaDA-8B's shape (``--family dream``: Dream-7B's,
a run of its own with its own budget), in bf16. Sections, each
guarded (an error or an out-of-memory is recorded and the next section runs; a section that would
start after ``--budget-s`` is skipped), most important first:

1. ``train``: one blockwise training step, micro-batch 32, records up to 256 tokens, LoRA r256 on
   the reference targets: the reference's path as it really runs (no checkpointing, padded to 256,
   full logits, no attention mask) against ``blocksft train``'s defaults on this GPU (``ours``: the
   auto settings resolved and printed), ``eager`` (ours without compiling or grouping) and ``fast``
   (compiled, no checkpointing, grouped, chunked head + CE); tokens/s, MFU, peak memory, and the
   same loss on a shared batch (``blocksft bench train --gpu-8b``);
2. ``decode``: batch 1, gen 256, block 32: plain, dual cache, threshold 0.9 and both, the loop
   against the CUDA-graph step; ms per forward against the weight-read floor
   (``blocksft bench generate --gpu-8b``);
3. ``eval``: GSM8K problems per minute at ``blocksft eval``'s defaults (batch 8) and at the fast
   settings (threshold 0.9, dual cache, CUDA graphs, batch 32) (``blocksft bench eval --gpu-8b``);
4. ``decode_batch8``, ``decode_batch32``: batch 8 with threshold 0.9 with and without the dual
   cache, batch 32 with both (threshold alone there: a minute per decoder), loop against graph;
5. ``decode_compiled``: batch 1, dual cache + threshold, the step compiled whole with
   ``torch.compile`` and captured (``--decode compiled``), if time is left.

Prints each section's table as it finishes and a summary with the targets' ratios at the end;
writes everything to ``$OUT/gpu_check.json`` when ``OUT`` is set (or ``--json``), after every section.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import time
import traceback
from pathlib import Path

import torch

from blocksft.bench import eval as eval_bench
from blocksft.bench import generate as generate_bench
from blocksft.bench import train as train_bench

TRAIN_PATHS = "reference ours eager fast"


def sections(tiny: bool, family: str = "llada") -> list[tuple[str, str, list[str]]]:
    """(key, benchmark, argv) of each section, in the order they run, for ``family``'s model."""
    if tiny:
        train = (
            f"--gpu-8b --tiny --device cpu --micro-batch 4 --max-len 64 --lora-r 8 --steps 1 --warmup 0 "
            f"--compile-backend eager --paths {TRAIN_PATHS}"
        )
        shape = "--gpu-8b --tiny --device cpu --gen-length 16 --block-length 8 --models confident"
        decode = f"{shape} --batch 1 --repeats 1"
        batches = (f"{shape} --batch 2 --repeats 1", f"{shape} --batch 3 --repeats 1")
        evaluate = (
            "--gpu-8b --tiny --device cpu --gen-length 16 --block-length 8 --default-batch 2 --fast-batch 4"
        )
        evaluate += " --data none"
    else:
        train = f"--gpu-8b --steps 3 --warmup 2 --paths {TRAIN_PATHS}"
        shape = "--gpu-8b --gen-length 256 --block-length 32 --threshold 0.9 --models confident"
        decode = f"{shape} --batch 1 --repeats 2"
        batches = (f"{shape} --batch 8 --repeats 1", f"{shape} --batch 32 --repeats 1")
        evaluate = "--gpu-8b --gen-length 256 --block-length 32"
    chosen = [
        ("train", "train", train),
        (
            "decode",
            "generate",
            f"{decode} --modes plain dual threshold 'dual + threshold' --decode loop graph",
        ),
        ("eval_default", "eval", f"{evaluate} --settings default --problems {4 if tiny else 16}"),
        ("eval_fast", "eval", f"{evaluate} --settings fast --problems {4 if tiny else 32}"),
        # Threshold alone at batch 32 runs ~120 full forwards of 32 x 320 positions: a minute per decoder.
        (
            "decode_batch8",
            "generate",
            f"{batches[0]} --modes threshold 'dual + threshold' --decode loop graph",
        ),
        ("decode_batch32", "generate", f"{batches[1]} --modes 'dual + threshold' --decode loop graph"),
    ]
    if not tiny:  # compiling the whole step takes minutes on a CPU
        chosen.append(
            ("decode_compiled", "generate", f"{decode} --modes 'dual + threshold' --decode graph compiled")
        )
    return [(key, benchmark, [*shlex.split(argv), "--family", family]) for key, benchmark, argv in chosen]


def run_section(benchmark: str, argv: list[str]) -> dict:
    def say(text: str) -> None:
        print(text, flush=True)

    if benchmark == "train":
        result = train_bench.benchmark(argv)
        say(train_bench.format_report(result))
        return result
    if benchmark == "eval":
        return eval_bench.benchmark(argv, on_line=say)
    return generate_bench.benchmark(argv, on_row=say)


def find_row(result, **match) -> dict | None:
    rows = result.get("rows", []) if isinstance(result, dict) else []
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def summary(results: dict) -> str:
    """The tables in a few lines, and the targets' ratios."""
    lines = ["", "=== summary ==="]
    train = results.get("train")
    if isinstance(train, dict) and "paths" in train:
        base = train["paths"].get("reference")
        lines.append(f"train ({train['settings']['objective']}, {train['device']}):")
        lines.append("  path | tokens/s | x reference | peak GiB | MFU | settings")
        for name, row in train["paths"].items():
            ratio = row["tokens_per_s_median"] / base["tokens_per_s_median"] if base else float("nan")
            mfu = f"{row['mfu_median']:.1%}" if row["mfu_median"] is not None else "-"
            lines.append(
                f"  {name} | {row['tokens_per_s_median']:.0f} | {ratio:.2f}x | "
                f"{row['peak_memory_mib'] / 1024:.1f} | {mfu} | {row['settings']}"
            )
        lines += [f"  {name}: {text}" for name, text in train["choices"].items()]
        lines.append("  loss check: " + ("same" if all(c["same"] for c in train["checks"]) else "DIFFERENT"))
        ours = train["paths"].get("ours")
        if base and ours:
            ratio = ours["tokens_per_s_median"] / base["tokens_per_s_median"]
            mfu = f"{ours['mfu_median']:.1%}" if ours["mfu_median"] is not None else "-"
            lines.append(f"  target: ours >= 2.0x the reference -> {ratio:.2f}x; MFU >= 45 % -> {mfu}")
    else:
        lines.append(f"train: {train}")
    for key in ("decode", "decode_batch8", "decode_batch32", "decode_compiled"):
        result = results.get(key)
        if key not in results:
            continue
        if not (isinstance(result, dict) and "rows" in result):
            lines.append(f"{key}: {result}")
            continue
        lines.append(
            f"{key}: model | batch | mode | decode | NFE | tokens/s | speed-up (over) | ms/forward | x floor"
        )
        for r in result["rows"]:
            floor = f"{r['over_floor']:.1f}x" if r["over_floor"] is not None else "-"
            lines.append(
                f"  {r['model']} | {r['batch']} | {r['mode']} | {r['decode']} | {r['nfe']} | "
                f"{r['tokens_per_s']:.1f} | {r['speed_up']:.2f}x ({r['baseline']}) | "
                f"{r['ms_per_forward']:.1f} | {floor}"
            )
    decode = results.get("decode")
    if isinstance(decode, dict) and "rows" in decode:
        confident = [r for r in decode["rows"] if r["model"] == "confident" and r["decode"] != "loop"]
        best = max(confident, key=lambda r: r["speed_up"], default=None)
        if best:
            what = f"{best['mode']}, {best['decode']}"
            lines.append(f"  target: >= 10x plain at batch 1 -> {best['speed_up']:.2f}x ({what})")
        floors = [r for r in confident if r["over_floor"] is not None]
        for r in sorted(floors, key=lambda r: r["over_floor"])[:2]:
            what = f"{r['mode']}, {r['decode']}: {r['ms_per_forward']:.1f} ms"
            positions = r["forward_tokens"] / r["nfe"]
            lines.append(
                f"  target: a forward within 2x of the weight-read floor -> {r['over_floor']:.2f}x "
                f"({what}, {positions:.0f} positions per forward)"
            )
    rates = {}
    for key in ("eval_default", "eval_fast"):
        result = results.get(key)
        if isinstance(result, dict) and result.get("rows"):
            row = result["rows"][0]
            rates[key] = row["problems_per_minute"]
            lines.append(
                f"{key}: {row['problems_per_minute']:.1f} problems/min (batch {row['batch_size']}, "
                f"NFE {row['mean_nfe_per_problem']:.0f} per problem)"
            )
        else:
            lines.append(f"{key}: {result}")
    if len(rates) == 2:
        lines.append(f"  fast / default: {rates['eval_fast'] / rates['eval_default']:.2f}x")
    return "\n".join(lines)


def write_results(results: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny shape (a smoke test of this script)")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="start no section after this many seconds"
    )
    parser.add_argument(
        "--family", choices=["llada", "dream"], default="llada", help="the random model's family"
    )
    parser.add_argument("--only", nargs="+", default=None, help="run only these sections")
    parser.add_argument("--json", default=None, help="default: $OUT/gpu_check.json when OUT is set")
    args = parser.parse_args(argv)
    path = args.json or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    start = time.perf_counter()
    results: dict = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "family": args.family,
    }
    for key, benchmark, section_argv in sections(args.tiny, args.family):
        if args.only and key not in args.only:
            continue
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            results[key] = f"skipped: {elapsed:.0f} s elapsed (budget {args.budget_s:.0f} s)"
            continue
        print(f"\n=== {key}: blocksft bench {benchmark} {' '.join(section_argv)} ===", flush=True)
        try:
            results[key] = run_section(benchmark, section_argv)
        except Exception as error:  # an OOM or a failure is a result too; the next section still runs
            traceback.print_exc()
            results[key] = (
                f"error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            )
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        results.setdefault("seconds", {})[key] = round(time.perf_counter() - start - elapsed, 1)
        # Written after every section: a run stopped at the lease's limit keeps what it measured.
        write_results(results, path)
    print(summary(results), flush=True)
    if path:
        print(f"wrote {path}")
    failed = [k for k, v in results.items() if isinstance(v, str) and v.startswith("error")]
    return 1 if failed and args.tiny else 0


if __name__ == "__main__":
    raise SystemExit(main())
