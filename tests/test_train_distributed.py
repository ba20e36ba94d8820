"""Two CPU processes (torchrun, gloo): data sharded without overlap, the loss all-reduced, and the
same samples per step as one process with gradient accumulation."""

import json
import os
import subprocess
import sys

import pytest
from train_utils import read_rows, tiny_config, write_tiny_inputs

from blocksft.train.run import run_train

pytestmark = pytest.mark.slow


def test_two_processes_shard_the_data_and_log_the_mean_loss(tmp_path):
    model_dir, data = write_tiny_inputs(tmp_path)
    flags = ["--model", str(model_dir), "--data", str(data), "--micro-batch", "4", "--max-samples", "0"]
    flags += ["--block-size", "8", "--lr", "0.02", "--lora-r", "8", "--lora-alpha", "16", "--max-len", "64"]
    flags += ["--epochs", "1", "--total-steps", "5", "--lora-dropout", "0", "--use-cpu"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "blocksft.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command + flags + ["--ckpt-dir", str(tmp_path / "ddp")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    logs = tmp_path / "ddp_logs"
    rows = read_rows(logs / "train_loss.csv")
    batches = [json.loads(line) for line in (logs / "batches.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and [(b["step"], b["rank"]) for b in batches] == [
        (s, r) for s in range(1, 6) for r in (0, 1)
    ]
    samples = [s for b in batches for s in b["samples"]]
    assert len(samples) == 5 * 2 * 4 and len(set(samples)) == len(samples), (
        "two ranks trained the same sample"
    )
    for step, row in enumerate(rows, 1):
        rank_losses = [b["loss"] for b in batches if b["step"] == step]
        assert rank_losses[0] != rank_losses[1]
        assert float(row["loss"]) == pytest.approx(sum(rank_losses) / 2, rel=1e-6)
        assert int(row["samples"]) == 8
    assert (tmp_path / "ddp_step0005" / "config.json").is_file()
    assert json.loads((logs / "config.json").read_text())["derived"]["world_size"] == 2

    # One process accumulating two micro-batches of 4 trains on the same samples, with the same losses.
    single = tiny_config(
        tmp_path,
        model_dir,
        data,
        "single",
        micro_batch=4,
        grad_accum=2,
        epochs=1,
        total_steps=5,
        lora_dropout=0.0,
    )
    run_train(single)
    single_batches = [
        json.loads(line) for line in (single.logs_dir / "batches.jsonl").read_text().splitlines()
    ]
    assert sorted(s for b in single_batches for s in b["samples"]) == sorted(samples)
    single_losses = [float(r["loss"]) for r in read_rows(single.logs_dir / "train_loss.csv")]
    assert single_losses == pytest.approx([float(r["loss"]) for r in rows], rel=1e-4)
