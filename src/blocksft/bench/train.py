"""Benchmark: our training step against a faithful re-implementation of the reference's, on one model.

    PYTHONPATH=src python -m blocksft bench train        # CPU: 4 layers, width 256, vocab 126,464
    blocksft bench train --gpu-8b                         # LLaDA-8B shape, bf16, LoRA r256, CUDA
    blocksft bench train --gpu-8b --family dream          # Dream-7B shape
    blocksft bench train --paths reference ours grouped   # one row per path

Every path trains the same model (random weights, the same LoRA adapters and AdamW) in the same
process; the paths take turns step by step (the order flips every round), so a change in the
machine's load hits them alike. The records are MetaMathQA-like (prompt 60-140 tokens, answer up
to ``--max-len``; :func:`blocksft.bench.noise.synthetic_examples`) or a record file (``--data``).

* ``reference``: the reference scripts' path as they run it (:mod:`blocksft.reference`). A
  ``Dataset`` noises each item with per-token Python (``ReferenceBlockwiseDataset`` /
  ``ReferenceFullSeqDataset``), pads it to ``--max-len``, and the items are stacked; the model gets
  no attention mask (padding is attended), computes the full ``[B, max_len, V]`` logits, eagerly and
  without gradient checkpointing (its model code has none); the loss is the float32 cross-entropy
  at the masked positions, each sample's mean, averaged over the samples. The reference scripts
  train LLaDA only; on Dream (``--family dream``) this path is their recipe with Dream's logits
  re-aligned (:func:`blocksft.reference.reference_loss`), the same loss for a shifted model.
* ``ours``: what ``blocksft train`` runs with its defaults on this device: the item plan,
  :class:`PadCollator` (pad to the batch's longest record rounded up to 8, padding masked out of
  attention), :class:`TrainStep` (noising on the device, the LM head only at the loss positions),
  and ``--torch-compile``, ``--gradient-checkpointing`` and ``--group-by-length`` at ``auto``,
  resolved as ``blocksft train`` resolves them (:mod:`blocksft.train.speed`; on CPU all off).
* the other paths change settings of ``ours`` (``VARIANTS``; the flags of ``blocksft train``):
  ``eager`` (no compiling, no grouping), ``fast`` (compiled, no checkpointing, grouped, chunked
  head + CE), ``paper`` (the paper recipes' inputs: padded to ``--max-len``, padding attended) and
  one setting each for the rest. ``--gradient-checkpointing`` sets it for every path but the
  reference (``auto`` by default).

A step is timed from building the batch to the optimizer step: data pipeline, copy to the device,
forward, backward, gradient clipping, AdamW. ``tokens/s`` counts real (prompt + answer) tokens,
the same currency for every path, and ``samples/s`` rows; both are given at the median and the best
step, and the speed-up also in tokens per second of the process's CPU time (with ``--threads 1``
other jobs on a shared machine do not inflate it; with several threads, OpenMP's spin-waiting for a
preempted thread counts as CPU time too, and such runs are slow and erratic on a busy machine).
Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each step); on CPU the
process's resident-set high-water mark (``VmHWM`` of ``/proc/self/status``, reset before each step
through ``/proc/self/clear_refs``), where ``step`` is that peak minus the resident set before it.

MFU (GPUs): the step's model FLOPs over its time and the GPU's dense bf16 peak, counted by
:class:`blocksft.train.metrics.FlopModel` (one multiply-add = 2 FLOPs). Forward: ``2 * N_body``
per processed token (every block weight, LoRA adapters included; padding is processed, so it
counts), ``2 * d_model * V`` per position whose logits are computed (all ``B x max_len`` for the
reference, the loss positions for ours) and attention ``4 * n_layers * d_model * L`` per token.
Backward: the forward again for activation gradients (attention twice), plus ``2 * N_trainable``
per token for the weight gradients of the adapters (frozen weights get none). In all, with
``T = B x L`` processed tokens and ``H`` logit positions::

    FLOPs = 4 N_body T + 2 N_trainable T + 4 d_model V H + 12 n_layers d_model L T

Gradient checkpointing's recomputed forward is not counted (model FLOPs, not hardware FLOPs).
The reference's padding and full logits are FLOPs it really computes, so its MFU can be the
higher one while its tokens/s is lower: compare tokens/s.

Loss check, before the timing, with dropout off and one batch noised once (the reference dataset's
draw): the reference's loss and ours on the reference's inputs (padded to ``--max-len``, padding
attended, ``--pad-to-max-len --attend-padding`` in ``blocksft train``) must agree to float
rounding; and every path on its own inputs (padded to its length, padding masked) must agree with
the reference's loss computed with the padding masked. The reference's attended padding changes
the loss a little: that difference is printed too.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

import peft
import torch
import transformers

from blocksft.bench.generate import add_family_argument, family_label, random_model
from blocksft.bench.noise import synthetic_examples
from blocksft.config.flags import OneLineParser
from blocksft.config.train import TrainConfig, is_on
from blocksft.data.records import load_records
from blocksft.families import family_named, family_of_model, unwrap_model
from blocksft.families.base import ModelShape
from blocksft.model.loading import resolve_dtype
from blocksft.objectives import NoisedBatch, get_objective
from blocksft.reference import (
    ReferenceBlockwiseDataset,
    ReferenceFullSeqDataset,
    reference_collate,
    reference_loss,
)
from blocksft.special_tokens import resolve_special_ids
from blocksft.train.choices import format_choices
from blocksft.train.items import (
    ItemDataset,
    TrainBatch,
    block_schedule,
    group_by_length,
    plan_items,
    round_up,
)
from blocksft.train.logs import write_json
from blocksft.train.lora import apply_lora
from blocksft.train.metrics import FlopModel, peak_flops_for
from blocksft.train.run import build_collator, build_train_step
from blocksft.train.speed import compile_blocks, resolve_grouping, resolve_model_speed

# Our paths: ``blocksft train`` settings on top of its defaults (auto resolved for the device).
VARIANTS = {
    "ours": {},
    "eager": {"torch_compile": "off", "group_by_length": "off"},
    "fast": {
        "torch_compile": "on",
        "gradient_checkpointing": "off",
        "group_by_length": "on",
        "ce_chunk_size": 1024,
    },
    "paper": {"pad_to_max_len": True, "attend_padding": True},
    "full-logits": {"sparse_logits": False},
    "chunked-ce": {"ce_chunk_size": 1024},
    "grouped": {"group_by_length": "on"},
    "compiled": {"torch_compile": "on"},
    "ours+chunked+grouped": {"ce_chunk_size": 1024, "group_by_length": "on"},
}
FLOPS_FORMULA = (
    "MFU counts model FLOPs = 4 N_body T + 2 N_trainable T + 4 d_model V H + 12 n_layers d_model L T "
    "(T = B x L processed tokens, H = positions with logits; checkpointing's recompute not counted)"
)
PATHS = ("reference", *VARIANTS)

# The CPU default: small, but with LLaDA's vocabulary so that the LM head costs what it does.
CPU_SHAPE = ModelShape(n_layers=4, d_model=256, n_heads=4, n_kv_heads=4, mlp_hidden=768, vocab_rows=126464)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="blocksft bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=["reference", "ours"])
    parser.add_argument(
        "--gpu-8b",
        action="store_true",
        help="the family's published shape (LLaDA-8B, Dream-7B), bf16, CUDA, LoRA r256, micro-batch 32",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the family's 2-layer, width-64, vocab-512 shape (tests)"
    )
    add_family_argument(parser)
    parser.add_argument("--layers", type=int, default=CPU_SHAPE.n_layers, help="CPU shape: blocks")
    parser.add_argument("--width", type=int, default=CPU_SHAPE.d_model, help="CPU shape: d_model")
    parser.add_argument("--vocab", type=int, default=CPU_SHAPE.vocab_rows, help="CPU shape: vocabulary")
    parser.add_argument("--objective", choices=["blockwise", "fullseq"], default="blockwise")
    parser.add_argument("--micro-batch", type=int, default=None, help="default 8, or 32 with --gpu-8b")
    parser.add_argument("--max-len", type=int, default=256, help="the reference pads to this")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--lora-r", type=int, default=None, help="default 16, or 256 with --gpu-8b")
    parser.add_argument("--lora-targets", default="reference")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per path first")
    parser.add_argument(
        "--data", default=None, help="a record file (default: synthetic MetaMathQA-like records)"
    )
    parser.add_argument(
        "--full-length",
        action="store_true",
        help="synthetic records of exactly --max-len tokens (no padding)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        choices=["auto", "on", "off"],
        default="auto",
        help="for every path but the reference (auto: blocksft train's rule; off on CPU)",
    )
    parser.add_argument("--device", default=None, help="default: cuda with --gpu-8b, else cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak for MFU (known GPUs: auto)"
    )
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile's backend (tests: eager, no codegen)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


def parse_args(argv) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.device = args.device or ("cuda" if args.gpu_8b else "cpu")
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") or args.gpu_8b else "fp32")
    args.micro_batch = args.micro_batch or (32 if args.gpu_8b else 8)
    args.lora_r = args.lora_r or (256 if args.gpu_8b else 16)
    return args


# ----- The reference's path ---------------------------------------------------------------------


class ReferencePath:
    """Per-item Python noising in a Dataset, padding to ``max_len``, stacking, then the full logits."""

    compiled = checkpointing = False
    settings = "eager, no checkpointing, padded to max_len, full logits, no mask"

    def __init__(self, records, order, args, model_config, device):
        special = resolve_special_ids(None, model_config)  # a random model: its config's ids
        ids = dict(mask_id=special.mask, pad_id=special.pad, seed=args.seed)
        if args.objective == "blockwise":
            self.dataset = ReferenceBlockwiseDataset(
                records, block_size=args.block_size, max_len=args.max_len, **ids
            )
        else:
            self.dataset = ReferenceFullSeqDataset(records, max_len=args.max_len, **ids)
        self.records, self.order, self.micro_batch, self.device = records, order, args.micro_batch, device
        self.cursor = 0

    def __call__(self, model):
        indices = self.order[self.cursor : self.cursor + self.micro_batch]
        self.cursor += self.micro_batch
        batch = reference_collate([self.dataset[i] for i in indices])  # what its DataLoader does
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        loss = reference_loss(model, batch["noisy_ids"], batch["input_ids"], batch["mask_flags"])
        b, seq_len = batch["input_ids"].shape
        tokens = sum(len(self.records[i]["full_ids"]) for i in indices)
        return loss, StepShape(b, tokens, seq_len, b * seq_len)


# ----- Our paths ----------------------------------------------------------------------------------


@dataclasses.dataclass
class StepShape:
    """What a step processed: rows, real tokens, padded length, positions whose logits were computed."""

    samples: int
    tokens: int
    seq_len: int
    logit_positions: int | torch.Tensor


class OurPath:
    """``blocksft train``'s data path and :class:`TrainStep`, built by ``run_train``'s own builders
    from a :class:`~blocksft.config.train.TrainConfig` whose speed settings are resolved."""

    def __init__(self, config, records, objective, model_config, device, steps: int):
        items = plan_items(block_schedule(config, objective, records), 1, blockwise=objective.blockwise)
        items = items[: steps * config.micro_batch]
        if is_on(config.group_by_length):
            items = group_by_length(
                items,
                [len(r["full_ids"]) for r in records],
                slice_size=config.micro_batch,
                window=config.length_group_steps * config.micro_batch,
                seed=config.seed,
            )
        self.dataset = ItemDataset(records, items)
        self.collate = build_collator(config, objective, resolve_special_ids(None, model_config).pad)
        self.step = build_train_step(config, objective)
        self.compiled, self.checkpointing = is_on(config.torch_compile), is_on(config.gradient_checkpointing)
        self.micro_batch, self.device, self.cursor = config.micro_batch, device, 0
        self.settings = describe_settings(config)

    def __call__(self, model):
        batch = self.collate([self.dataset[k] for k in range(self.cursor, self.cursor + self.micro_batch)])
        self.cursor += self.micro_batch
        tokens = int((batch.prompt_lens + batch.answer_lens).sum())
        batch = batch.to(self.device, non_blocking=True)
        loss, loss_mask = self.step(model, batch)
        b, seq_len = loss_mask.shape
        positions = loss_mask.sum() if self.step.sparse_logits else b * seq_len
        return loss, StepShape(b, tokens, seq_len, positions)


def describe_settings(config) -> str:
    """A path's settings in a few words (the report's column)."""
    parts = [
        "compiled" if config.torch_compile == "on" else "eager",
        "checkpointing" if config.gradient_checkpointing == "on" else "no checkpointing",
        "grouped" if config.group_by_length == "on" else "not grouped",
        f"padded to {'max_len' if config.pad_to_max_len else 'longest'}",
    ]
    if config.attend_padding:
        parts.append("padding attended")
    if not config.sparse_logits:
        parts.append("full logits")
    if config.ce_chunk_size:
        parts.append(f"chunked CE {config.ce_chunk_size}")
    return ", ".join(parts)


def path_config(name: str, args, model, objective):
    """The :class:`TrainConfig` of our path ``name``: the bench's shape, the variant's settings,
    ``auto`` resolved as ``run_train`` resolves it for this model and device; and the choices."""
    shape = dict(
        objective=args.objective,
        micro_batch=args.micro_batch,
        max_len=args.max_len,
        block_size=args.block_size,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    config = TrainConfig(**{**shape, **VARIANTS[name]})
    on_gpu = torch.device(args.device).type == "cuda"
    choices = [resolve_grouping(config, on_gpu), *resolve_model_speed(config, model, objective, on_gpu)]
    return dataclasses.replace(config, **{c.setting: c.ran for c in choices}), choices


# ----- Measuring ----------------------------------------------------------------------------------


class MemoryProbe:
    """Peak memory of one step: CUDA's allocator peak, or the CPU process's resident-set high-water."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.kind = (
            "torch.cuda.max_memory_allocated" if self.cuda else "VmHWM (RSS high-water, reset per step)"
        )

    @staticmethod
    def _status_kib(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def start(self) -> int:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            self.kind = "VmHWM (RSS high-water since the process started: not resettable here)"
        return self._status_kib("VmRSS") * 1024

    def peak(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        return self._status_kib("VmHWM") * 1024


def set_compiled(blocks, compiled_forwards) -> None:
    """Route each block through its compiled forward (a list), or back to the eager one (None)."""
    for k, block in enumerate(blocks):
        if compiled_forwards is None:
            block.__dict__.pop("forward", None)
        else:
            block.forward = compiled_forwards[k]


def set_checkpointing(blocks, on: bool) -> None:
    for block in blocks:
        block.gradient_checkpointing = on


class PathSwitch:
    """Puts the model in a path's mode before its step: compiled blocks or eager, checkpointing or not."""

    def __init__(self, model, paths: dict, backend: str = "inductor"):
        self.blocks = model.get_base_model().blocks
        self.compiled_forwards = None
        self.notes: list[str] = []
        if any(path.compiled for path in paths.values()):
            compile_blocks(model, backend=backend, on_fallback=self._fell_back)
            self.compiled_forwards = [block.__dict__.pop("forward") for block in self.blocks]
        if any(path.checkpointing for path in paths.values()):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _fell_back(self, note: str) -> None:
        self.notes.append(note)
        self.compiled_forwards = None

    def __call__(self, path) -> None:
        set_compiled(self.blocks, self.compiled_forwards if path.compiled else None)
        set_checkpointing(self.blocks, path.checkpointing)

    def reset(self) -> None:
        set_compiled(self.blocks, None)
        set_checkpointing(self.blocks, False)


def time_paths(model, paths: dict, optimizer, args, device, flop_model, peak_flops, switch) -> dict:
    """Alternate the paths step by step; per-path lists of step seconds, shapes, memory and losses."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    probe = MemoryProbe(device)
    records = {name: [] for name in paths}
    warmup_seconds = {name: [] for name in paths}  # compiling happens here
    names = list(paths)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    for round_ in range(args.warmup + args.steps):
        for name in names if round_ % 2 == 0 else names[::-1]:
            path = paths[name]
            switch(path)
            sync()
            before = probe.start()
            start, cpu_start = time.perf_counter(), time.process_time()
            with autocast:
                loss, shape = path(model)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            peak = probe.peak()
            if round_ < args.warmup:
                warmup_seconds[name].append(seconds)
            else:
                positions = int(shape.logit_positions)
                flops = float(flop_model.step_flops(shape.samples * shape.seq_len, shape.seq_len, positions))
                records[name].append(
                    dict(
                        seconds=seconds,
                        cpu_seconds=cpu_seconds,
                        samples=shape.samples,
                        tokens=shape.tokens,
                        seq_len=shape.seq_len,
                        flops=flops,
                        peak=peak,
                        step_memory=peak - before,
                        loss=float(loss.detach()),
                    )
                )
    switch.reset()
    summaries = {name: summarise(steps, peak_flops) for name, steps in records.items()}
    for name, seconds in warmup_seconds.items():
        summaries[name]["warmup_s"] = seconds
        summaries[name]["settings"] = paths[name].settings
    return summaries | {"memory": probe.kind}


def summarise(steps: list[dict], peak_flops: float | None) -> dict:
    """Median and best of a path's timed steps."""
    tokens_per_s = [s["tokens"] / s["seconds"] for s in steps]
    tokens_per_cpu_s = [s["tokens"] / max(s["cpu_seconds"], 1e-9) for s in steps]
    samples_per_s = [s["samples"] / s["seconds"] for s in steps]
    flops_per_s = [s["flops"] / s["seconds"] for s in steps]
    return {
        "steps": len(steps),
        "step_s_min": min(s["seconds"] for s in steps),
        "step_s_median": statistics.median(s["seconds"] for s in steps),
        "tokens_per_s_median": statistics.median(tokens_per_s),
        "tokens_per_s_best": max(tokens_per_s),
        "tokens_per_cpu_s_median": statistics.median(tokens_per_cpu_s),
        "samples_per_s_median": statistics.median(samples_per_s),
        "samples_per_s_best": max(samples_per_s),
        "mean_padded_len": statistics.mean(s["seq_len"] for s in steps),
        "peak_memory_mib": max(s["peak"] for s in steps) / 2**20,
        "step_memory_mib": max(s["step_memory"] for s in steps) / 2**20,
        "tflops_per_s_median": statistics.median(flops_per_s) / 1e12,
        "mfu_median": statistics.median(flops_per_s) / peak_flops if peak_flops else None,
        "losses": [s["loss"] for s in steps],
    }


def loss_checks(model, paths: dict, records, args, model_config, device, switch) -> list[dict]:
    """The losses of every path on one batch noised once by the reference's dataset (dropout off),
    each path in its own mode (compiled blocks where it compiles)."""
    reference = ReferencePath(records, list(range(len(records))), args, model_config, device)
    indices = list(range(args.micro_batch))
    batch = reference_collate([reference.dataset[i] for i in indices])
    batch = {k: v.to(device) for k, v in batch.items()}
    ids, noisy, flags = batch["input_ids"], batch["noisy_ids"], batch["mask_flags"]  # [B, max_len]
    prompt = torch.tensor([int(records[i]["prompt_len"]) for i in indices], device=device)
    lengths = torch.tensor([len(records[i]["full_ids"]) for i in indices], device=device)
    blocks = batch.get("blk_index", torch.zeros_like(prompt))
    attention = (torch.arange(args.max_len, device=device)[None, :] < lengths[:, None]).long()  # [B, max_len]
    tolerance = 2e-2 if args.dtype == "bf16" else 1e-4
    checks = []
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
        attended = float(reference_loss(model, noisy, ids, flags))
        masked = float(reference_loss(model, noisy, ids, flags, attention_mask=attention))
        for name, path in paths.items():
            if name == "reference":
                continue
            switch(path)
            rows = torch.tensor(indices, device=device)
            full = TrainBatch(
                input_ids=ids,
                attention_mask=attention,
                prompt_lens=prompt,
                answer_lens=lengths - prompt,
                block_index=blocks,
                sample_ids=rows,
                item_ids=rows,
                first_item=0,
                has_padding=True,
            )
            noised = NoisedBatch(noisy, flags, torch.ones(len(indices), device=device))
            same_inputs = float(dataclasses.replace(path.step, attend_padding=True).loss(model, full, noised))
            cut = path.collate.pad_to or round_up(int(lengths.max()), path.collate.multiple_of)
            own = dataclasses.replace(full, input_ids=ids[:, :cut], attention_mask=attention[:, :cut])
            own_noised = NoisedBatch(noisy[:, :cut], flags[:, :cut], noised.p)
            own_loss = float(path.step.loss(model, own, own_noised))
            own_reference = attended if path.step.attend_padding else masked  # the paper recipes attend
            checks.append(
                dict(
                    path=name,
                    reference_attending_padding=attended,
                    ours_on_reference_inputs=same_inputs,
                    reference_on_own_inputs=own_reference,
                    ours_on_own_inputs=own_loss,
                    same=abs(same_inputs - attended) <= tolerance * abs(attended)
                    and abs(own_loss - own_reference) <= tolerance * abs(own_reference),
                )
            )
    switch.reset()
    model.train()
    return checks


# ----- Setup and report ---------------------------------------------------------------------------


def model_shape(args) -> ModelShape | None:
    """The bench's shape: the family's tiny one, None for its published one (LLaDA-8B-Instruct's or
    Dream-7B's config), else ``--layers``/``--width``/``--vocab`` with heads of width 64 (a family
    with grouped-query attention: a quarter of them for keys and values, as its tiny shape)."""
    family = family_named(args.family)
    if args.tiny:
        return family.tiny_shape
    if args.gpu_8b:
        return None
    heads = max(1, args.width // 64)
    tiny = family.tiny_shape
    return ModelShape(
        n_layers=args.layers,
        d_model=args.width,
        n_heads=heads,
        n_kv_heads=max(1, heads * tiny.n_kv_heads // tiny.n_heads),
        mlp_hidden=3 * args.width,
        vocab_rows=args.vocab,
    )


def bench_records(args, vocab: int, count: int) -> list[dict]:
    if args.data:
        records = load_records(args.data, max_len=args.max_len)
        if len(records) < count:
            raise SystemExit(f"--data {args.data}: {len(records)} records, the run needs {count}")
        return records[:count]
    if args.full_length:
        generator = torch.Generator().manual_seed(args.seed)
        return [
            {
                "prompt_len": args.max_len // 3,
                "full_ids": torch.randint(6, vocab, (args.max_len,), generator=generator),
            }
            for _ in range(count)
        ]
    return synthetic_examples(count, max_len=args.max_len, seed=args.seed, vocab=vocab)


def benchmark(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns everything it measured (what ``main`` prints)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    # ----- Model: random weights made once on the device, LoRA, AdamW -----
    model, lora, optimizer = build_model(args)
    config = model.get_base_model().config
    shape = model_shape(args)

    # ----- Records and paths -----
    rounds = args.warmup + args.steps
    records = bench_records(args, config.vocab_size, rounds * args.micro_batch)
    mask_id = resolve_special_ids(None, config).mask  # a random model: its config's ids
    objective = get_objective(args.objective, mask_id=mask_id, block_size=args.block_size)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(args.seed)).tolist()
    paths, choices = {}, {}
    for name in args.paths:
        if name == "reference":
            paths[name] = ReferencePath(records, order, args, config, device)
        else:
            settings, resolved = path_config(name, args, model, objective)
            choices[name] = format_choices(resolved)
            paths[name] = OurPath(settings, records, objective, config, device, rounds)
    switch = PathSwitch(model, paths, backend=args.compile_backend)

    # ----- Loss check, then the timed steps -----
    checks = loss_checks(model, paths, records, args, config, device, switch)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    timings = time_paths(
        model,
        paths,
        optimizer,
        args,
        device,
        flop_model_of(model, lora),
        peak_flops_of(args, device_name),
        switch,
    )
    return {
        "benchmark": "train",
        "device": device_name or platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "family": family_label(model.get_base_model()),
        "shape": published_shape_name(args) if shape is None else dataclasses.asdict(shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "lora": lora.summary(),
        "settings": run_settings(args),
        "memory": timings.pop("memory"),
        "paths": timings,
        "choices": choices,
        "compile_notes": switch.notes,
        "checks": checks,
    }


def published_shape_name(args) -> str:
    return {"llada": "LLaDA-8B", "dream": "Dream-7B"}[args.family]


def build_model(args):
    """A random model of the bench's family and shape made on its device, LoRA on it, and AdamW over
    the adapters."""
    model = random_model(
        family_named(args.family),
        model_shape(args),
        device=args.device,
        dtype=resolve_dtype(args.dtype),
        seed=args.seed,
    )
    model, lora = apply_lora(
        model, targets=args.lora_targets, r=args.lora_r, alpha=2.0 * args.lora_r, dropout=0.05
    )
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.95)
    )
    return model, lora, optimizer


def flop_model_of(model, lora) -> FlopModel:
    """The FLOP count of a step of the bench's model (its recompute left out: model FLOPs)."""
    shape = family_of_model(model).shape(unwrap_model(model).config)
    return FlopModel(
        body_params=sum(p.numel() for p in unwrap_model(model).blocks.parameters()),
        trained_params=lora.trainable_params,
        head_params=shape.d_model * shape.vocab_rows,
        n_layers=shape.n_layers,
        d_model=shape.d_model,
    )


def peak_flops_of(args, device_name: str | None) -> float | None:
    """The device's dense bf16 peak for MFU: ``--peak-tflops``, else a known GPU's, else none."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    return peak_flops_for(device_name) if device_name else None


def run_settings(args) -> dict:
    """The settings the report prints, and where the records came from."""
    names = (
        "objective",
        "micro_batch",
        "max_len",
        "lora_r",
        "dtype",
        "gradient_checkpointing",
        "steps",
        "warmup",
    )
    records = "file " + args.data if args.data else ("full-length" if args.full_length else "synthetic")
    return {name: getattr(args, name) for name in names} | {"records": records}


def format_report(result: dict) -> str:
    paths = result["paths"]
    base = paths.get("reference")
    lines = [
        f"blocksft bench train: {result['parameters'] / 1e6:.1f}M-parameter random {result['family']} "
        f"{result['shape']}, "
        f"{result['device']}, {result['threads']} threads, "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "settings: " + ", ".join(f"{k} {v}" for k, v in result["settings"].items()),
        result["lora"],
        f"peak memory: {result['memory']}; 'step' = peak minus what was held before the step",
        FLOPS_FORMULA,
        *(f"{name}: {text}" for name, text in result["choices"].items()),
        *(f"note: {note}" for note in result["compile_notes"]),
        "",
        "| path | padded len | s/step min | s/step median | samples/s | tokens/s (median) | tokens/s (best) "
        "| speed-up (median) | speed-up (best) | speed-up (CPU time) | peak MiB | step MiB | MFU "
        "| settings |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in paths.items():
        ratio = ratio_best = ratio_cpu = "-"
        if base:
            ratio = f"{row['tokens_per_s_median'] / base['tokens_per_s_median']:.2f}x"
            ratio_best = f"{row['tokens_per_s_best'] / base['tokens_per_s_best']:.2f}x"
            ratio_cpu = f"{row['tokens_per_cpu_s_median'] / base['tokens_per_cpu_s_median']:.2f}x"
        mfu = f"{row['mfu_median']:.1%}" if row["mfu_median"] is not None else "-"
        cells = [
            name,
            f"{row['mean_padded_len']:.0f}",
            f"{row['step_s_min']:.3f}",
            f"{row['step_s_median']:.3f}",
            f"{row['samples_per_s_median']:.2f}",
            f"{row['tokens_per_s_median']:.0f}",
            f"{row['tokens_per_s_best']:.0f}",
            ratio,
            ratio_best,
            ratio_cpu,
            f"{row['peak_memory_mib']:.0f}",
            f"{row['step_memory_mib']:.0f}",
            mfu,
            row["settings"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if result["checks"]:
        lines += ["", "loss check (one batch noised once, dropout off):"]
        for c in result["checks"]:
            lines.append(
                f"  {c['path']}: reference's inputs (padding attended): reference "
                f"{c['reference_attending_padding']:.6f} ours {c['ours_on_reference_inputs']:.6f}; "
                f"own inputs: reference {c['reference_on_own_inputs']:.6f} ours "
                f"{c['ours_on_own_inputs']:.6f} -> " + ("same" if c["same"] else "DIFFERENT")
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    result = benchmark(argv)
    print(format_report(result), flush=True)
    args = parse_args(argv)
    if args.json:
        write_json(Path(args.json), result)
    return 0 if all(c["same"] for c in result["checks"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
