"""`run_train` end to end at LLaDA-8B shape on one GPU: the Trainer path a user runs, not the bench.

    PYTHONPATH=src python bench/gpu_train_cli.py            # one CUDA GPU, ~40 GB of disk
    PYTHONPATH=src python bench/gpu_train_cli.py --tiny     # the same code on CPU, tiny shape (tests)

A random bf16 LLaDA of the 8B shape is saved as a checkpoint (with a tiny tokenizer whose special
ids it shares), synthetic records of 160-256 tokens are written as a record file, and
``run_train`` runs Blockwise SFT with the defaults of ``paper_blockwise`` (LoRA r256 on the
reference targets, micro-batch 32, bf16, gradient checkpointing) for a few steps, then exports
the merged checkpoint. Prints the seconds of each phase, tokens/s of the logged steps, the peak
GPU memory and the merged checkpoint's size; writes ``$OUT/gpu_train_cli.json`` when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from blocksft.bench.generate import random_model
from blocksft.config.train import TrainConfig
from blocksft.data.records import save_records, tokenizer_fingerprint
from blocksft.families.base import ModelShape
from blocksft.families.llada import LLADA
from blocksft.special_tokens import mask_token_id
from blocksft.testing import tiny_tokenizer
from blocksft.train.logs import read_loss_csv
from blocksft.train.run import run_train


def build_checkpoint(folder: Path, tokenizer, *, tiny: bool, device: str) -> None:
    """A random bf16 LLaDA (8B shape, or tiny) sharing ``tokenizer``'s special ids, saved with it."""
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=mask_token_id(tokenizer),
    )
    # Tiny layers, but LLaDA-8B's 126,464 embedding rows (the tiny tokenizer's ids are all below them).
    shape = ModelShape(n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, mlp_hidden=128, vocab_rows=126464)
    model = random_model(
        LLADA, shape if tiny else None, device=device, dtype=torch.bfloat16, seed=0, special=special
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def write_records(path: Path, tokenizer, n: int, seed: int = 0) -> None:
    """``n`` synthetic records of 160-256 ordinary tokens, with the tokenizer's sidecar."""
    rng = random.Random(seed)
    low, high = 6, len(tokenizer)  # ordinary tokens only
    records = []
    for _ in range(n):
        length = rng.randint(160, 256)
        prompt = rng.randint(40, 100)
        ids = [tokenizer.bos_token_id] + [rng.randrange(low, high) for _ in range(length - 1)]
        records.append({"prompt_len": prompt, "full_ids": torch.tensor(ids)})
    save_records(records, path, meta={"tokenizer": tokenizer_fingerprint(tokenizer)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_train_cli-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    tokenizer = tiny_tokenizer()
    clock = time.perf_counter()
    build_checkpoint(work / "base", tokenizer, tiny=args.tiny, device=device)
    result["seconds_build_and_save_base"] = round(time.perf_counter() - clock, 1)
    print(f"base checkpoint saved in {result['seconds_build_and_save_base']} s", flush=True)
    micro_batch = 4 if args.tiny else 32
    write_records(work / "records.pt", tokenizer, n=micro_batch * args.steps)
    config = TrainConfig(
        objective="blockwise",
        model=str(work / "base"),
        data=str(work / "records.pt"),
        micro_batch=micro_batch,
        total_steps=args.steps,
        max_samples=0,
        lr=1e-5,
        lora_r=8 if args.tiny else 256,
        lora_alpha=16 if args.tiny else 512,
        dtype="fp32" if args.tiny else "bf16",
        deepspeed=None,
        gradient_checkpointing=True,
        use_cpu=device == "cpu",
        ckpt_dir=str(work / "run"),
        log_every=1,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    clock = time.perf_counter()
    trained = run_train(config)
    result["seconds_run_train"] = round(time.perf_counter() - clock, 1)
    if device == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    columns = read_loss_csv(config.logs_dir / "train_loss.csv")
    result["loss"] = [round(x, 4) for x in columns["loss"]]
    result["tokens_per_s"] = [round(x) for x in columns["tokens_per_s"]]
    export = Path(trained.exports[-1])
    result["merged_checkpoint_gib"] = round(sum(f.stat().st_size for f in export.glob("*")) / 2**30, 2)
    result["budget"] = trained.budget
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_train_cli.json").write_text(text + "\n")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
