"""One writer per output, with real processes: racing runs, a run killed with SIGKILL, then resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_utils import TINY_TRAIN_FLAGS, read_rows, write_tiny_inputs

from blocksft.data.records import load_records, read_meta

pytestmark = pytest.mark.slow

TRAIN_FLAGS = [*TINY_TRAIN_FLAGS, "--epochs", "4", "--lr", "0.02"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one-writer")
    return write_tiny_inputs(folder)


def blocksft(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "blocksft", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=600)
    return process.returncode, err


def train_args(inputs, *extra: str) -> list[str]:
    model_dir, data = inputs
    return [
        "train",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--ckpt-dir",
        "run",
        *TRAIN_FLAGS,
        *extra,
    ]


def race(args: list[str], cwd: Path) -> tuple[str, str]:
    """Start two identical runs at once; one must succeed, the other fail with one line.

    Returns:
        The winner's stderr and the loser's error line.
    """
    first, second = blocksft(*args, cwd=cwd), blocksft(*args, cwd=cwd)
    (ok, ok_err), (failed, failed_err) = sorted([finish(first), finish(second)], key=lambda o: o[0])
    assert (ok, failed) == (0, 2), ok_err + failed_err
    lines = [line for line in failed_err.splitlines() if line.startswith(f"blocksft {args[0]}: error: ")]
    assert "Traceback" not in failed_err and len(lines) == 1, failed_err
    return ok_err, lines[0]


def test_two_train_runs_on_one_ckpt_dir(inputs, tmp_path):
    args = train_args(inputs, "--total-steps", "6")
    log, line = race(args, tmp_path)
    # The loser met the winner's claim, or (had it started late) the finished run's logs.
    assert "is in use by another blocksft process" in line or "exists already" in line, line
    # The winner's stderr is a pipe, as a cluster job's log file: whole lines, no bar redrawn.
    assert "\r" not in log and "train: 6/6 step (100%)" in log, log
    steps = [int(r["step"]) for r in read_rows(tmp_path / "run_logs" / "train_loss.csv")]
    assert steps == list(range(1, 7))  # every step logged once, by one run
    assert json.loads((tmp_path / "run_logs" / "budget.json").read_text())["samples"] == 6 * 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_logs", "run_step0006"]


def test_a_killed_run_resumes_its_claim_and_cleans_its_half_written_export(inputs, tmp_path):
    args = train_args(inputs, "--total-steps", "12", "--checkpoint-every", "2")
    run = blocksft(*args, cwd=tmp_path)
    marker = tmp_path / "run_logs" / "checkpoints" / "checkpoint-2" / "blocksft_state.json"
    deadline = time.monotonic() + 300
    while not marker.is_file() and run.poll() is None:
        assert time.monotonic() < deadline, "no resumable state appeared"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)  # as the OOM killer or a scheduler would
    run.communicate()
    assert (tmp_path / ".run.lock").is_file()  # its claim file stays; the kernel released the lock
    # A merged export cut short by the kill (as large as the weights, in a real run).
    partial = tmp_path / ".run_step0012.tmp-4242"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 1024)

    resumed = blocksft(*args, "--resume", cwd=tmp_path)
    code, err = finish(resumed)
    assert code == 0, err
    assert "removed" in err and str(partial.name) in err
    assert not partial.exists() and not (tmp_path / ".run.lock").exists()
    steps = [int(r["step"]) for r in read_rows(tmp_path / "run_logs" / "train_loss.csv")]
    assert steps == list(range(1, 13))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_logs", "run_step0012"]


def test_two_prepare_runs_on_one_output(tmp_path, tokenizer):
    model_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(model_dir)
    rows = [
        {"query": f"What is {i} + {i}?", "response": f"{i} + {i} = {2 * i}.\nThe answer is: {2 * i}"}
        for i in range(400)
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = [
        "prepare",
        "--dataset",
        "rows.jsonl",
        "--model",
        str(model_dir),
        "--output",
        "out.pt",
        "--filter_type",
        "",
        "--max-samples",
        "0",
    ]
    _, line = race(args, tmp_path)
    assert any(text in line for text in ("is in use by another", "already exists", "appeared while")), line
    records = load_records(tmp_path / "out.pt", tokenizer=tokenizer)
    assert len(records) == 400 and read_meta(tmp_path / "out.pt")["num_records"] == 400  # sidecar matches
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out.pt",
        "out.pt.meta.json",
        "rows.jsonl",
        "tokenizer",
    ]
