"""The GPU check: every GPU figure of bench/RESULTS.md in one run of a few minutes on one H100/H200.

    PYTHONPATH=src python bench/gpu_check.py             # from the repository root, one CUDA GPU
    PYTHONPATH=src python bench/gpu_check.py --tiny      # the same code on CPU with a tiny shape (tests)

Nothing is downloaded: the models are random, at LLaDA-8B's shape, in bf16. Sections, each
guarded (an error or an out-of-memory is recorded and the next section runs; a section that would
start after ``--budget-s`` is skipped):

1. training step, blockwise, micro-batch 32, records up to 256 tokens, LoRA r256 on the reference
   targets, gradient checkpointing on every path: the reference's path against ours, and ours with
   the chunked head + CE and length grouping (``blocksft bench train --gpu-8b``);
2. our step without gradient checkpointing (whether it fits, and what it gains);
3. training step, full-sequence objective: reference, ours, ours with the chunked head + CE;
4. generation at gen 256 / block 32: plain against prefix/dual caches and threshold 0.9
   (``blocksft bench generate --gpu-8b``);
5. our step with compiled blocks (``--torch-compile``) against eager, if time is left (compiling
   takes a minute or two).

Prints each section's table as it finishes and a compact summary at the end; writes everything to
``$OUT/gpu_check.json`` when ``OUT`` is set (or ``--json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def sections(tiny: bool) -> list[tuple[str, str, list[str]]]:
    """(key, benchmark, argv) of each section (``--tiny`` skips compiling: minutes on CPU)."""
    if tiny:
        shape = "--gpu-8b --tiny --device cpu --micro-batch 4 --max-len 64 --lora-r 8 --steps 1 --warmup 0"
        generate = "--gpu-8b --tiny --device cpu --gen-length 16 --block-length 8"
    else:
        shape = "--gpu-8b --steps 4 --warmup 1"
        generate = "--gpu-8b --gen-length 256 --block-length 32 --threshold 0.9"
    chosen = [
        ("train", "train", f"{shape} --paths reference ours ours+chunked+grouped"),
        ("train_without_checkpointing", "train", f"{shape} --paths ours --no-gradient-checkpointing"),
        ("train_fullseq", "train", f"{shape} --objective fullseq --paths reference ours chunked-ce"),
        ("generate", "generate", generate),
    ]
    if not tiny:
        chosen.append(("train_compiled", "train", "--gpu-8b --steps 3 --warmup 2 --paths ours compiled"))
    return [(key, benchmark, argv.split()) for key, benchmark, argv in chosen]


def run_section(benchmark: str, argv: list[str]) -> dict:
    if benchmark == "train":
        from blocksft.bench.train import benchmark as train_benchmark
        from blocksft.bench.train import format_report

        result = train_benchmark(argv)
        print(format_report(result), flush=True)
        return result
    from blocksft.bench.generate import benchmark as generate_benchmark

    return generate_benchmark(argv, on_row=lambda text: print(text, flush=True))


def summary(results: dict) -> str:
    lines = ["", "=== summary ==="]
    for key in ("train", "train_without_checkpointing", "train_fullseq", "train_compiled"):
        result = results.get(key)
        if not isinstance(result, dict) or "paths" not in result:
            lines.append(f"{key}: {result}")
            continue
        base = result["paths"].get("reference") or results.get("train", {}).get("paths", {}).get("reference")
        lines.append(f"{key} ({result['settings']['objective']}, {result['device']}):")
        lines.append("  path | tokens/s | speed-up | peak GiB | MFU")
        for name, row in result["paths"].items():
            speed_up = f"{row['tokens_per_s_median'] / base['tokens_per_s_median']:.2f}x" if base else "-"
            mfu = f"{row['mfu_median']:.1%}" if row["mfu_median"] is not None else "-"
            tokens_per_s, peak_gib = row["tokens_per_s_median"], row["peak_memory_mib"] / 1024
            lines.append(f"  {name} | {tokens_per_s:.0f} | {speed_up} | {peak_gib:.1f} | {mfu}")
        lines.append("  loss check: " + ("same" if all(c["same"] for c in result["checks"]) else "DIFFERENT"))
    generate = results.get("generate")
    if isinstance(generate, dict) and "rows" in generate:
        lines.append("generate (tokens/s, speed-up over plain, NFE):")
        for row in generate["rows"]:
            speed = f"{row['tokens_per_s']:.1f} | {row['speed_up']:.2f}x"
            lines.append(f"  {row['model']} | {row['mode']} | {speed} | {row['nfe']}")
    else:
        lines.append(f"generate: {generate}")
    return "\n".join(lines)


def write_results(results: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny shape (a smoke test of this script)")
    parser.add_argument(
        "--budget-s", type=float, default=330.0, help="start no section after this many seconds"
    )
    parser.add_argument("--json", default=None, help="default: $OUT/gpu_check.json when OUT is set")
    args = parser.parse_args(argv)
    import torch

    path = args.json or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    start = time.perf_counter()
    results: dict = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
    }
    for key, benchmark, section_argv in sections(args.tiny):
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
