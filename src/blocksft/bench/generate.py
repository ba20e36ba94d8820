"""Benchmark the block sampler: tokens/s and NFE, plain vs prefix/dual cache vs threshold vs both,
the loop against the fixed-shape steps (``--decode loop graph``), at several batch sizes.

    PYTHONPATH=src python -m blocksft bench generate     # small random LLaDA on CPU (one to two minutes)
    blocksft bench generate --gpu-8b                      # LLaDA-8B shape, random bf16 weights, on CUDA
    blocksft bench generate --gpu-8b --family dream       # Dream-7B shape
    blocksft bench generate --gpu-8b --batch 1 8 32 --decode loop graph --models confident

Every mode is timed in the same process as the plain sampler and reported as a ratio to it, on two
random models of one shape. "random" is the usual initialisation (std 0.02): every masked position
predicts nearly the same flat distribution (top probability about 0.003 to 0.5), so a 0.9 threshold is
never crossed and threshold decoding degenerates to the schedule's one token per step. "confident" is
initialised with std 0.1 and its LM head rescaled until logits have standard deviation
``--logit-std``: its predictions differ between positions and many are above 0.9, as a trained
model's are, so the threshold acts. ``agree`` is the share of generated tokens equal to the plain
sampler's on the same model (caches are approximations; threshold decoding commits early).

Each (model, batch) is timed against its plain loop run. ``ms/forward`` is the time per model
evaluation (seconds / NFE); on CUDA it is compared with the weight-read floor, the time to read
every weight once from memory (bytes of the weights / ``--bandwidth-tbs``), which no forward can
beat at batch 1. The fixed-shape decoders keep their decoder between the repeats of one run
(:class:`~blocksft.generation.static.DecoderCache`): the first repeat includes capturing the CUDA
graphs, ``first s`` reports it, the best repeat counts.
"""

from __future__ import annotations

import dataclasses
import platform
import time

import torch

from blocksft.config.flags import OneLineParser
from blocksft.families import FAMILIES, ModelFamily, family_named
from blocksft.families.base import ModelShape
from blocksft.generation.sampler import generate
from blocksft.generation.static import DecoderCache
from blocksft.model.loading import resolve_dtype
from blocksft.special_tokens import resolve_special_ids

MODES = {
    "plain": {},
    "prefix": {"cache": "prefix"},
    "dual": {"cache": "dual"},
    "threshold": {"threshold": True},
    "prefix + threshold": {"cache": "prefix", "threshold": True},
    "dual + threshold": {"cache": "dual", "threshold": True},
}

# The CPU default: small enough that all twelve runs take about a minute on two cores (a family
# with grouped-query attention keeps its tiny shape's key/value heads).
SMALL_SHAPE = ModelShape(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, mlp_hidden=384, vocab_rows=8192)


def add_family_argument(parser) -> None:
    """``--family``: which family's random model the bench builds (the shape flags keep their sizes)."""
    parser.add_argument(
        "--family",
        choices=[f.name for f in FAMILIES],
        default="llada",
        help="the random model's family (--gpu-8b: LLaDA-8B or Dream-7B shape)",
    )


def add_model_arguments(parser) -> None:
    """The random model the decoding benches build: ``--gpu-8b``, ``--tiny``, ``--family``, ``--device``."""
    parser.add_argument(
        "--gpu-8b", action="store_true", help="the family's published shape (LLaDA-8B, Dream-7B), bf16, CUDA"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the family's 2-layer, width-64 shape (smoke test)"
    )
    add_family_argument(parser)
    parser.add_argument("--device", default=None, help="default: cuda with --gpu-8b, else cpu")


def bench_shape(family: ModelFamily, *, tiny: bool, published: bool) -> ModelShape | None:
    """The shape of a bench's random model: the family's tiny one, its published one (None: the
    config class's defaults, LLaDA-8B's or Dream-7B's) or :data:`SMALL_SHAPE`."""
    if tiny:
        return family.tiny_shape
    if published:
        return None
    return dataclasses.replace(SMALL_SHAPE, n_kv_heads=family.tiny_shape.n_kv_heads)


def family_label(model) -> str:
    """``LLaDA`` or ``Dream``: the family's own spelling, from the config's model_type."""
    return {"llada": "LLaDA", "Dream": "Dream"}.get(model.config.model_type, model.config.model_type)


def parse_args(argv):
    parser = OneLineParser(prog="blocksft bench generate", description=__doc__.splitlines()[0])
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="default: gen_length (one token per step)")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument(
        "--confidence",
        choices=["float64", "llada"],
        default="float64",
        help="the sampler's confidence mode, for every mode (llada: generate.py's, full logits)",
    )
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes")
    parser.add_argument(
        "--decode",
        nargs="+",
        choices=["loop", "static", "graph", "compiled"],
        default=["loop"],
        help="decoders timed for every mode (not loop: temperature 0, float64 confidence only)",
    )
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--models", nargs="+", choices=["random", "confident"], default=["random", "confident"]
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per mode (the fastest counts)")
    parser.add_argument(
        "--bandwidth-tbs",
        type=float,
        default=4.8,
        help="memory bandwidth for the weight-read floor (H200: 4.8)",
    )
    parser.add_argument(
        "--logit-std",
        type=float,
        default=10.0,
        help="the confident model's logit spread (LM head rescaled to it)",
    )
    add_model_arguments(parser)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (CPU time is measured)")
    args = parser.parse_args(argv)
    args.steps = args.steps or args.gen_length
    args.device = args.device or ("cuda" if args.gpu_8b else "cpu")
    args.dtype = args.dtype or ("bf16" if args.gpu_8b else "fp32")
    return args


def random_model(
    family: ModelFamily,
    shape: ModelShape | None,
    *,
    device: str,
    dtype,
    seed: int,
    init_std: float = 0.02,
    special: dict | None = None,
):
    """A randomly initialised model of ``family`` built straight on ``device`` in ``dtype`` (no
    float32 copy of an 8B model ever exists): parameters on the meta device, then allocated and
    filled (normal weights of std ``init_std``, norms 1, biases 0).

    ``shape``: a :class:`ModelShape`, or None for the published shape (the config class's
    defaults). ``special``: the special token ids (default: the family's tiny tokenizer's for a
    given ``shape``, the published ones for None)."""
    if shape is None:
        config = family.config_class(**(special or {}))
    else:
        config = family.config_for(shape, **(family.special_ids() if special is None else special))
    with torch.device("meta"):
        model = family.model_class(config)
    model = model.to(dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.normal_(0.0, init_std, generator=generator)
    return model.eval()


def sharpen(model, prompt, gen_length: int, logit_std: float) -> float:
    """Scale the LM head so that logits over a masked canvas have standard deviation ``logit_std``
    (a random model's are ~0.3: every prediction is unsure); returns the factor."""
    canvas = torch.cat(
        [prompt, torch.full_like(prompt[:, :1], model.config.mask_token_id).expand(-1, gen_length)], 1
    )
    with torch.no_grad():
        factor = logit_std / model(canvas).logits.float().std().item()
        model.get_output_embeddings().weight.mul_(factor)
    return factor


def time_generate(model, prompt, settings: dict, repeats: int):
    """``(output, best seconds, first seconds)`` of ``repeats`` identical runs."""
    mask_id = resolve_special_ids(None, model.config).mask  # a random model: its config's ids
    # CUDA: wall time after a synchronize. CPU: this process's CPU time, which other jobs on a
    # shared machine do not inflate (wall time there varied 2x between identical runs).
    clock = time.perf_counter if prompt.is_cuda else time.process_time
    times, out = [], None
    for _ in range(repeats):
        if prompt.is_cuda:
            torch.cuda.synchronize()
        start = clock()
        out = generate(model, prompt, mask_id=mask_id, **settings)
        if prompt.is_cuda:
            torch.cuda.synchronize()
        times.append(clock() - start)
    return out, min(times), times[0]


def bench_model(name: str, model, prompt, args, floor_ms: float | None = None):
    """Every mode and decoder on one model and batch, timed against the first of them (the plain
    loop run unless ``--modes`` leaves it out); yields one result dict per (mode, decoder)."""
    base = dict(
        gen_length=args.gen_length,
        block_length=args.block_length,
        steps=args.steps,
        confidence=args.confidence,
    )
    num_blocks = args.gen_length // args.block_length
    warm_up = {**base, "gen_length": args.block_length, "steps": args.steps // num_blocks}
    time_generate(model, prompt, warm_up, 1)
    decoders = DecoderCache(size=1)
    plain = None
    for mode in args.modes:
        settings = {**base, **MODES[mode]}
        if MODES[mode].get("threshold"):
            settings["threshold"] = args.threshold
        for decode in args.decode:
            extra = {} if decode == "loop" else {"decode": decode, "decoders": decoders}
            out, seconds, first = time_generate(model, prompt, {**settings, **extra}, args.repeats)
            tokens_per_s = prompt.shape[0] * args.gen_length / seconds
            if plain is None:  # the first mode and decoder: plain and loop unless left out
                plain = (out, tokens_per_s, f"{mode} {decode}")
            ms_per_forward = 1000 * seconds / out.nfe
            yield {
                "model": name,
                "batch": prompt.shape[0],
                "mode": mode.replace("threshold", f"threshold {args.threshold:g}"),
                "decode": decode,
                "nfe": out.nfe,
                "forward_tokens": out.forward_tokens,
                "seconds": seconds,
                "first_seconds": first,
                "tokens_per_s": tokens_per_s,
                "speed_up": tokens_per_s / plain[1],
                "baseline": plain[2],
                "nfe_ratio": plain[0].nfe / out.nfe,
                "ms_per_forward": ms_per_forward,
                "over_floor": ms_per_forward / floor_ms if floor_ms else None,
                "agree": (out.generated == plain[0].generated).float().mean().item(),
            }


def format_row(row: dict) -> str:
    floor = f"{row['over_floor']:.1f}x" if row["over_floor"] is not None else "-"
    return (
        f"| {row['model']} | {row['batch']} | {row['mode']} | {row['decode']} | {row['nfe']} | "
        f"{row['forward_tokens']} | {row['seconds']:.2f} | {row['first_seconds']:.2f} | "
        f"{row['tokens_per_s']:.1f} | {row['speed_up']:.2f}x | {row['nfe_ratio']:.2f}x | "
        f"{row['ms_per_forward']:.1f} | {floor} | {row['agree']:.0%} |"
    )


TABLE_HEADER = (
    "| model | batch | mode | decode | NFE | forward tokens | {clock} | first s | tokens/s | speed-up "
    "| NFE ratio | ms/forward | over floor | agree |\n" + "|---" * 14 + "|"
)


def describe(model, args) -> str:
    shape = family_named(args.family).shape(model.config)
    n_params = sum(p.numel() for p in model.parameters())
    on_cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(args.device) if on_cuda else platform.processor() or "cpu"
    return (
        f"blocksft bench generate: {n_params / 1e6:.1f}M-parameter random {family_label(model)} "
        f"({shape.n_layers} layers, d_model {shape.d_model}, {shape.n_heads} heads, {shape.n_kv_heads} "
        f"key/value heads, vocab {model.config.vocab_size}), {args.dtype} on {args.device} "
        f"({device_name}), torch {torch.__version__}, {torch.get_num_threads()} threads\n"
        f"gen_length {args.gen_length}, block_length {args.block_length}, steps {args.steps}, "
        f"confidence {args.confidence}, batch {' '.join(map(str, args.batch))}, prompt "
        f"{args.prompt_length} tokens, best of {args.repeats}\n"
    )


def weight_read_floor_ms(model, bandwidth_tbs: float) -> float:
    """Milliseconds to read every weight of ``model`` once at ``bandwidth_tbs`` TB/s."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return weight_bytes / (bandwidth_tbs * 1e12) * 1e3


def benchmark(argv: list[str] | None = None, *, on_row=None) -> dict:
    """Run the benchmark; returns its description and rows (``on_row(text)`` gets each printed line)."""
    say = on_row or (lambda text: None)
    args = parse_args(argv)
    if not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    family = family_named(args.family)
    shape = bench_shape(family, tiny=args.tiny, published=args.gpu_8b)
    build = dict(device=args.device, dtype=resolve_dtype(args.dtype), seed=args.seed)
    generator = torch.Generator(device=args.device).manual_seed(args.seed + 1)
    result = {"benchmark": "generate", "rows": []}
    inits = {"random": (0.02, None), "confident": (0.1, args.logit_std)}
    on_cuda = args.device.startswith("cuda")
    for name in args.models:
        init_std, logit_std = inits[name]
        model = random_model(family, shape, init_std=init_std, **build)
        prompts = torch.randint(
            6,
            model.config.vocab_size,
            (max(args.batch), args.prompt_length),
            generator=generator,
            device=args.device,
        )
        floor_ms = weight_read_floor_ms(model, args.bandwidth_tbs) if on_cuda else None
        if "description" not in result:
            result["description"] = describe(model, args)
            if floor_ms:
                result["description"] += (
                    f"weight-read floor: {floor_ms:.2f} ms per forward at {args.bandwidth_tbs:g} TB/s\n"
                )
            result["weight_read_floor_ms"] = floor_ms
            say(result["description"])
            say(TABLE_HEADER.format(clock="wall s" if on_cuda else "CPU s"))
        if logit_std is not None:
            sharpen(model, prompts[:1], args.gen_length, logit_std)
        for batch in args.batch:
            for row in bench_model(name, model, prompts[:batch], args, floor_ms):
                result["rows"].append(row)
                say(format_row(row))
        del model
        if on_cuda:
            torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    benchmark(argv, on_row=lambda text: print(text, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
