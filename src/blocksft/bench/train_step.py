"""GPU check of our training step: a few blockwise steps at LLaDA-8B shape with random weights.

Run: ``blocksft bench train_step`` (or ``python bench/train_step.py``) on one GPU: LoRA r256 on the
reference targets, micro-batch 32, 256 tokens, bf16 autocast with fp32 adapters (what
``blocksft train`` does without DeepSpeed), AdamW. It prints tokens/s, peak memory and MFU, where
the FLOPs are counted as the training logs count them (:class:`blocksft.train.metrics.FlopModel`:
2 FLOPs per weight per token forward, the same again backward for activation gradients, and again
for the trained weights' gradients (the LoRA adapters); the LM head only where logits are
computed; attention ``4 * layers * d_model * seq_len`` per token forward). ``--tiny`` runs the
same code on a small model on CPU in seconds (for the tests).

This measures our step alone; ``blocksft bench train`` compares it with the reference's path.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from blocksft.train.metrics import FlopModel, peak_flops_for


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blocksft bench train_step", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tiny", action="store_true", help="a small model (CPU run); shape from the next flags"
    )
    parser.add_argument("--layers", type=int, default=2, help="with --tiny: blocks")
    parser.add_argument("--width", type=int, default=64, help="with --tiny: d_model (MLP 2x, 4 heads)")
    parser.add_argument("--vocab", type=int, default=512, help="with --tiny: vocabulary (LLaDA: 126464)")
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lora-r", type=int, default=256)
    parser.add_argument("--lora-targets", default="reference")
    parser.add_argument("--objective", default="blockwise", choices=["blockwise", "fullseq"])
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--no-sparse-logits", dest="sparse_logits", action="store_false")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on GPU")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def model_config(args):
    from blocksft.model import LLaDAConfig
    from blocksft.testing import tiny_llada_config

    if not args.tiny:
        return LLaDAConfig()  # LLaDA-8B-Instruct's shape
    return tiny_llada_config(
        max_sequence_length=max(1024, args.seq_len),
        n_layers=args.layers,
        d_model=args.width,
        mlp_hidden_size=2 * args.width,
        vocab_size=args.vocab,
        embedding_size=args.vocab,
    )


def random_batch(config, *, micro_batch: int, seq_len: int, seed: int) -> dict:
    """Rows of exactly ``seq_len`` tokens: a prompt of 25-40% of the row, then the answer."""
    from blocksft.train.data import PadCollator

    generator = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(seq_len // 4, int(seq_len * 0.4), (micro_batch,), generator=generator)
    features = [
        {
            "full_ids": torch.randint(10, min(config.vocab_size, 126000), (seq_len,), generator=generator),
            "prompt_len": int(prompt_len),
            "block": 0,
            "sample": k,
            "item": k,
        }
        for k, prompt_len in enumerate(prompt_lens)
    ]
    return PadCollator(pad_id=int(config.pad_token_id))(features)


def main(argv: list[str] | None = None) -> int:
    from blocksft.model import LLaDAModelLM
    from blocksft.objectives import get_objective, num_blocks
    from blocksft.train.lora import apply_lora
    from blocksft.train.trainer import TrainStep

    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if on_gpu else "fp32")]
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    config = model_config(args)
    torch.manual_seed(args.seed)

    # ----- Model: random weights built on the device, LoRA -----
    with device:
        model = LLaDAModelLM._from_config(config, dtype=dtype)
    model, report = apply_lora(
        model, targets=args.lora_targets, r=args.lora_r, alpha=2.0 * args.lora_r, dropout=0.05
    )
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.95)
    )
    objective = get_objective(args.objective, mask_id=config.mask_token_id, block_size=args.block_size)
    step = TrainStep(objective, seed=args.seed, sparse_logits=args.sparse_logits)
    body = sum(p.numel() for n, p in model.named_parameters() if ".blocks." in n)
    flop_model = FlopModel(
        body_params=body,
        trained_params=report.trainable_params,
        head_params=config.d_model * config.embedding_size,
        n_layers=config.n_layers,
        d_model=config.d_model,
        recompute=args.gradient_checkpointing,
    )

    # ----- Batches: full-length rows, a block per row -----
    batches = []
    for k in range(args.warmup + args.steps):
        batch = random_batch(config, micro_batch=args.micro_batch, seq_len=args.seq_len, seed=args.seed + k)
        blocks = num_blocks(batch["answer_lens"], args.block_size)
        batch["block_index"] = (
            torch.rand(len(blocks), generator=torch.Generator().manual_seed(k)) * blocks
        ).long()
        batch["first_item"] = k * args.micro_batch
        batches.append({key: v.to(device) if torch.is_tensor(v) else v for key, v in batch.items()})

    # ----- Steps: forward, backward, clip, AdamW -----
    flops, seconds, losses = 0.0, 0.0, []
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    for k, batch in enumerate(batches):
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss, loss_mask = step(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if k >= args.warmup:
            seconds += time.perf_counter() - start
            positions = int(loss_mask.sum()) if args.sparse_logits else loss_mask.numel()
            flops += float(flop_model.step_flops(loss_mask.numel(), args.seq_len, positions))
            losses.append(float(loss.detach()))

    # ----- Report -----
    tokens = args.steps * args.micro_batch * args.seq_len
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if peak is None and on_gpu:
        peak = peak_flops_for(torch.cuda.get_device_name(device))
    result = {
        "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or "cpu",
        "shape": f"tiny ({args.layers} layers, width {args.width}, vocab {args.vocab})"
        if args.tiny
        else "LLaDA-8B",
        "lora": report.summary(),
        "micro_batch": args.micro_batch,
        "seq_len": args.seq_len,
        "dtype": str(dtype).removeprefix("torch."),
        "sparse_logits": args.sparse_logits,
        "gradient_checkpointing": args.gradient_checkpointing,
        "step_s": seconds / args.steps,
        "tokens_per_s": tokens / seconds,
        "tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else None,
        "loss": losses,
    }
    for key, value in result.items():
        print(f"{key:>24}: {value:.4g}" if isinstance(value, float) else f"{key:>24}: {value}")
    print(json.dumps(result))
    return 0
