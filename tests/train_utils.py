"""Shared by the training tests: a tiny saved model + tokenizer and a small, learnable record file."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open

from blocksft.config.train import TrainConfig
from blocksft.data.records import save_records, tokenizer_fingerprint
from blocksft.testing import tiny_llada_model, tiny_tokenizer
from blocksft.testing_dream import tiny_dream_model, tiny_dream_tokenizer

# The tiny tokenizer and model builders of each family.
TINY_BUILDERS = {
    "llada": (tiny_tokenizer, tiny_llada_model),
    "dream": (tiny_dream_tokenizer, tiny_dream_model),
}

PATTERN = list(range(6, 18))  # answers cycle through these ids: easy to learn, so the loss falls

# `blocksft train` flags for the tiny inputs, as tiny_config sets them (LoRA r8, micro-batch 8).
TINY_TRAIN_FLAGS = (
    "--micro-batch 8 --max-samples 0 --block-size 8 --lora-r 8 --lora-alpha 16 --max-len 64 --use-cpu".split()
)


def write_tiny_inputs(
    folder: Path, *, n_samples: int = 64, seed: int = 0, family: str = "llada"
) -> tuple[Path, Path]:
    """Save a tiny model of ``family`` + its tokenizer and a record file with its sidecar; return
    their paths. Prompts start with BOS where the family has one (LLaDA), else a random token."""
    build_tokenizer, build_model = TINY_BUILDERS[family]
    tokenizer = build_tokenizer()
    model_dir = folder / "model"
    build_model(tokenizer, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    generator = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(n_samples):
        prompt_len = int(torch.randint(4, 10, (1,), generator=generator))
        answer_len = int(torch.randint(10, 40, (1,), generator=generator))
        start = int(torch.randint(0, len(PATTERN), (1,), generator=generator))
        first = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        prompt = (
            first
            + torch.randint(20, len(tokenizer), (prompt_len - len(first),), generator=generator).tolist()
        )
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


# Runs in a fresh interpreter where importing blocksft fails: plain transformers + the checkpoint's
# own modeling files (trust_remote_code) must be enough.
LOAD_WITHOUT_BLOCKSFT = """
import sys

class NoBlocksft:
    def find_spec(self, name, path=None, target=None):
        if name == "blocksft" or name.startswith("blocksft."):
            raise ImportError("blocksft is not importable here")

sys.meta_path.insert(0, NoBlocksft())
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, ids_path, out_path = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype="auto")
AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    logits = model(input_ids=torch.load(ids_path)).logits
torch.save({"logits": logits, "module": type(model).__module__, "dtype": str(next(model.parameters()).dtype),
            "blocksft_loaded": any(m.startswith("blocksft") for m in sys.modules)}, out_path)
"""


def load_without_blocksft(folder: Path, ids: torch.Tensor, tmp_path: Path) -> dict:
    """Load a checkpoint folder with plain transformers and ``trust_remote_code`` in a fresh
    interpreter that cannot import blocksft; returns its logits for ``ids``, the model's module,
    dtype and whether blocksft was loaded."""
    torch.save(ids, tmp_path / "ids.pt")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": ""}
    command = [sys.executable, "-I", "-c", LOAD_WITHOUT_BLOCKSFT, str(folder)]
    subprocess.run(
        [*command, str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        check=True,
        env=env,
        capture_output=True,
    )
    return torch.load(tmp_path / "out.pt")


def save_random_adapter(model, targets: list[str], folder: Path, vocab_size: int):
    """A LoRA adapter on ``targets`` of ``model`` with random B (so it changes the logits), saved in
    ``folder``; returns ``(ids, logits)``: a fixed ``[2, 12]`` batch and the adapted model's logits."""
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    peft_model.save_pretrained(folder)
    ids = torch.randint(0, vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return ids, peft_model.eval()(input_ids=ids).logits
