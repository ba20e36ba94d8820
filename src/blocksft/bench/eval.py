"""Benchmark: GSM8K problems per minute for one model on one device, at ``blocksft eval``'s default
decoding settings and at the fast ones.

    blocksft bench eval --gpu-8b                  # LLaDA-8B shape, random bf16 weights, one GPU
    blocksft bench eval --gpu-8b --family dream   # Dream-7B shape
    blocksft bench eval --tiny --device cpu       # a tiny shape (tests)

The weights are random, so the figure is throughput (problems decoded per minute), not accuracy.
The model is the "confident" random model of ``blocksft bench generate`` (initialised with std 0.1,
its LM head rescaled to logit std ``--logit-std``): its predictions often pass a 0.9 threshold, as
a trained model's do, so threshold decoding commits several tokens per step as it would in a real
evaluation (how many depends on the model: treat the fast figure as indicative).

Prompts: each GSM8K test question in the prompt ``blocksft eval`` builds (training's alpaca
wrapper in the ``--family``'s chat template), from ``--data`` (default: :func:`default_gsm8k_file`),
tokenized by a byte-level BPE with the family's special tokens trained on that file's questions and
answers (no real tokenizer is at hand; its lengths are close: ~4 characters per token). Without
the file (or with ``--data none``): random ids with the lengths drawn from
:data:`GSM8K_PROMPT_LENGTHS`, measured that way in LLaDA's template (mean 132).

Each setting decodes the same ``--problems`` prompts in batches of its batch size, left-padded as
the evaluation pads them, and is timed end to end (wall clock, a synchronize at the end; CPU:
process time). Tokenizing, decoding the answers and scoring take milliseconds per problem and are
left out. ``NFE per problem``: the forwards each problem needed (what the results rows record);
``batch forwards``: the forwards that ran. Settings (``--settings``):

* ``default``: :class:`~blocksft.config.sampler.SamplerConfig`'s defaults (gen 256, block 32,
  256 steps, no cache, no threshold, the loop) at ``blocksft eval``'s batch size 8;
* ``fast``: ``--threshold 0.9 --cache dual --decode graph`` at batch 32 (``--fast-batch``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import torch

from blocksft.bench.generate import add_model_arguments, bench_shape, family_label, random_model, sharpen
from blocksft.evaluate.runner import build_prompt_ids, prompt_template
from blocksft.families import family_named
from blocksft.generation.sampler import generate
from blocksft.generation.static import DecoderCache
from blocksft.generation.transfer import left_pad
from blocksft.model.loading import resolve_dtype
from blocksft.special_tokens import resolve_special_ids

# Prompt lengths (tokens) of the 1,319 GSM8K test questions at the 0th, 5th, ..., 100th
# percentile: the alpaca prompt in LLaDA's chat template, tokenized by a byte-level BPE
# (blocksft.tokenizer.build_tokenizer, vocabulary 16,000, 10,380 used) trained on the test file's
# questions and answers. Mean 132.
GSM8K_PROMPT_LENGTHS = (
    96, 105, 109, 111, 113, 116, 119, 121, 124, 126, 129, 131, 134, 137, 140, 144, 148, 154, 162, 174, 261,
)  # fmt: skip
SETTINGS = ("default", "fast")


def default_gsm8k_file() -> Path | None:
    """``$BLOCKSFT_GSM8K_TEST``, or a ``shared/data/gsm8k/test.jsonl`` beside a folder above this
    file (the project's shared data next to a checkout), or None."""
    if os.environ.get("BLOCKSFT_GSM8K_TEST"):
        return Path(os.environ["BLOCKSFT_GSM8K_TEST"])
    found = (folder / "shared/data/gsm8k/test.jsonl" for folder in Path(__file__).resolve().parents)
    return next((path for path in found if path.is_file()), None)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="blocksft bench eval", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on CUDA")
    parser.add_argument("--problems", type=int, default=32, help="problems each setting decodes")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="default: gen_length")
    parser.add_argument("--default-batch", type=int, default=8, help="blocksft eval's default batch size")
    parser.add_argument("--fast-batch", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.9, help="the fast setting's")
    parser.add_argument("--cache", choices=["prefix", "dual"], default="dual", help="the fast setting's")
    parser.add_argument(
        "--decode", choices=["loop", "static", "graph"], default="graph", help="the fast one's"
    )
    parser.add_argument("--logit-std", type=float, default=10.0, help="the confident model's logit spread")
    parser.add_argument(
        "--data",
        default=None,
        help="GSM8K JSONL (default: the shared test file if present; none: random ids)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.steps = args.steps or args.gen_length
    args.device = args.device or ("cuda" if args.gpu_8b else "cpu")
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    return args


def sampler_settings(name: str, args) -> tuple[dict, int]:
    """``(generate keyword arguments, batch size)`` of a setting."""
    base = dict(gen_length=args.gen_length, block_length=args.block_length, steps=args.steps)
    if name == "default":
        return base, args.default_batch
    return {**base, "threshold": args.threshold, "cache": args.cache, "decode": args.decode}, args.fast_batch


def gsm8k_prompts(args, vocab: int) -> tuple[list[list[int]], str]:
    """``(prompt ids, where they come from)`` for ``--problems`` problems."""
    source = default_gsm8k_file() if args.data is None else (None if args.data == "none" else Path(args.data))
    if source is not None:
        rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        texts = [r["question"] + "\n" + r["answer"] for r in rows]
        tokenizer = family_named(args.family).build_tokenizer(texts, vocab_size=min(16000, vocab))
        template = prompt_template("alpaca")
        picked = [rows[k % len(rows)] for k in range(args.problems)]
        return [build_prompt_ids(tokenizer, r["question"], template) for r in picked], str(source)
    rng = random.Random(args.seed)
    quantiles = GSM8K_PROMPT_LENGTHS
    prompts = []
    for _ in range(args.problems):
        at = rng.random() * (len(quantiles) - 1)  # a uniform draw between neighbouring percentiles
        low = quantiles[int(at)]
        high = quantiles[min(int(at) + 1, len(quantiles) - 1)]
        length = round(low + (at - int(at)) * (high - low))
        prompts.append([rng.randrange(6, vocab) for _ in range(length)])
    return prompts, "random ids, GSM8K test prompt lengths"


def time_setting(model, prompts: list[list[int]], settings: dict, batch_size: int) -> dict:
    """Decode every prompt in batches; wall (CUDA) or process (CPU) seconds and NFE."""
    special = resolve_special_ids(None, model.config)  # a random model: its config's ids
    device = next(model.parameters()).device
    on_cuda = device.type == "cuda"
    clock = time.perf_counter if on_cuda else time.process_time
    decoders = DecoderCache(size=1)
    extra = {"decoders": decoders} if settings.get("decode", "loop") != "loop" else {}
    nfe = forwards = 0
    if on_cuda:
        torch.cuda.synchronize()
    start = clock()
    for first in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[first : first + batch_size], pad_id=special.pad, device=device)
        out = generate(model, ids, attention_mask=mask, mask_id=special.mask, **settings, **extra)
        nfe += int(out.row_nfe.sum()) if out.row_nfe is not None else out.nfe * len(ids)
        forwards += out.nfe
    if on_cuda:
        torch.cuda.synchronize()
    seconds = clock() - start
    return {
        "batch_size": batch_size,
        "seconds": seconds,
        "problems_per_minute": 60 * len(prompts) / seconds,
        "mean_nfe_per_problem": nfe / len(prompts),
        "forwards": forwards,
    }


def benchmark(argv: list[str] | None = None, *, on_line=None) -> dict:
    """Run the benchmark; returns its settings and one row per setting."""
    say = on_line or (lambda text: None)
    args = parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    if not on_cuda:
        torch.set_num_threads(args.threads)
    family = family_named(args.family)
    shape = bench_shape(family, tiny=args.tiny, published=args.gpu_8b)
    model = random_model(
        family, shape, device=args.device, dtype=resolve_dtype(args.dtype), seed=args.seed, init_std=0.1
    )
    prompts, source = gsm8k_prompts(args, model.config.vocab_size)
    sharpen(model, torch.tensor([prompts[0]], device=args.device), args.gen_length, args.logit_std)
    device_name = torch.cuda.get_device_name(args.device) if on_cuda else platform.processor() or "cpu"
    n_params = sum(p.numel() for p in model.parameters())
    lengths = [len(p) for p in prompts]
    result = {
        "benchmark": "eval",
        "description": (
            f"blocksft bench eval: {n_params / 1e6:.1f}M-parameter random 'confident' {family_label(model)}, "
            f"{args.dtype} "
            f"on {args.device} ({device_name}), torch {torch.__version__}; {len(prompts)} GSM8K prompts "
            f"({source}, {min(lengths)}-{max(lengths)} tokens, mean {sum(lengths) / len(lengths):.0f}); "
            f"gen_length {args.gen_length}, block_length {args.block_length}, steps {args.steps}; random "
            "weights: throughput, not accuracy"
        ),
        "rows": [],
    }
    say(result["description"])
    say(
        "| setting | sampler | batch | seconds | problems/min | NFE per problem | batch forwards | speed-up |"
    )
    say("|---|---|---|---|---|---|---|---|")

    # Warm-up: one short decode (kernels, cuBLAS handles), untimed.
    time_setting(
        model, prompts[:1], dict(gen_length=args.block_length, block_length=args.block_length, steps=1), 1
    )
    for name in args.settings:
        settings, batch_size = sampler_settings(name, args)
        row = {"setting": name, "sampler": settings, **time_setting(model, prompts, settings, batch_size)}
        first = result["rows"][0] if result["rows"] else row
        row["speed_up"] = row["problems_per_minute"] / first["problems_per_minute"]
        result["rows"].append(row)
        sampler = ", ".join(
            f"{k} {v}" for k, v in settings.items() if k not in ("gen_length", "block_length")
        )
        cells = [name, sampler, batch_size, f"{row['seconds']:.1f}", f"{row['problems_per_minute']:.1f}"]
        cells += [f"{row['mean_nfe_per_problem']:.0f}", row["forwards"], f"{row['speed_up']:.2f}x"]
        say("| " + " | ".join(map(str, cells)) + " |")
    return result


def main(argv: list[str] | None = None) -> int:
    result = benchmark(argv, on_line=lambda text: print(text, flush=True))
    args = parse_args(argv)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
