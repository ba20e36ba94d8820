"""Shared by the training tests: a tiny saved model + tokenizer and a small, learnable record file."""

import csv
from pathlib import Path

import torch
from safetensors import safe_open

from blocksft.config.train import TrainConfig
from blocksft.data.records import save_records, tokenizer_fingerprint
from blocksft.testing import tiny_llada_model, tiny_tokenizer

PATTERN = list(range(6, 18))  # answers cycle through these ids: easy to learn, so the loss falls

# `blocksft train` flags for the tiny inputs, as tiny_config sets them (LoRA r8, micro-batch 8).
TINY_TRAIN_FLAGS = (
    "--micro-batch 8 --max-samples 0 --block-size 8 --lora-r 8 --lora-alpha 16 --max-len 64 --use-cpu".split()
)


def write_tiny_inputs(folder: Path, *, n_samples: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """Save a tiny LLaDA model + tokenizer and a record file with its sidecar; return their paths."""
    tokenizer = tiny_tokenizer()
    model_dir = folder / "model"
    tiny_llada_model(tokenizer, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    generator = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(n_samples):
        prompt_len = int(torch.randint(4, 10, (1,), generator=generator))
        answer_len = int(torch.randint(10, 40, (1,), generator=generator))
        start = int(torch.randint(0, len(PATTERN), (1,), generator=generator))
        prompt = [tokenizer.bos_token_id] + torch.randint(
            20, len(tokenizer), (prompt_len - 1,), generator=generator
        ).tolist()
        answer = [PATTERN[(start + k) % len(PATTERN)] for k in range(answer_len)]
        records.append({"prompt_len": prompt_len, "full_ids": torch.tensor(prompt + answer)})
    data = folder / "data.pt"
    save_records(records, data, {"tokenizer": tokenizer_fingerprint(tokenizer)})
    return model_dir, data


def tiny_config(folder: Path, model_dir: Path, data: Path, name: str = "run", **overrides):
    """A fast CPU TrainConfig for the tiny inputs (LoRA r8, micro-batch 8, a high learning rate)."""

    values = dict(
        model=str(model_dir),
        data=str(data),
        ckpt_dir=str(folder / name),
        micro_batch=8,
        max_samples=0,
        epochs=4,
        block_size=8,
        lr=2e-2,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        max_len=64,
        use_cpu=True,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_rows(csv_path: Path) -> list[dict]:
    with Path(csv_path).open(newline="") as fh:
        return list(csv.DictReader(fh))


def safetensors_dtypes(folder: Path) -> dict[str, str]:
    """Tensor name -> dtype (``F32``, ``BF16``, ...) over a checkpoint folder's safetensors files."""

    dtypes = {}
    for path in Path(folder).glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            dtypes.update({k: f.get_slice(k).get_dtype() for k in f.keys()})
    return dtypes
