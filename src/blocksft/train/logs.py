"""The run's logs: ``train_loss.csv``, ``batches.jsonl`` and the budget summary (no torch here, so
``blocksft plot`` starts fast).

Counts are summed over every rank and accumulation micro-batch of a step; files are written by
rank 0 only. ``train_loss.csv`` columns: ``step, loss`` (the mean over all ranks and micro-batches,
where the reference logs one rank's micro-batch), then ``lr, grad_norm``, per-step
``supervised_tokens`` (loss-bearing), ``tokens`` (non-padding), ``padded_tokens`` (what the device
computed), ``samples``, estimated ``flops``, and ``tokens_per_s`` (non-padding tokens per second).
``batches.jsonl`` has one line per (step, rank, micro-batch): its sample ids, blocks and loss.
(``config.json`` and ``ablation_config.json`` are written by :mod:`blocksft.train.run`.)
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

from blocksft.errors import BlocksftError

CSV_COLUMNS = (
    "step",
    "loss",
    "lr",
    "grad_norm",
    "supervised_tokens",
    "tokens",
    "padded_tokens",
    "samples",
    "flops",
    "tokens_per_s",
)


def say(message: str) -> None:
    """Print on rank 0 only."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr, flush=True)


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


class CsvLog:
    """``train_loss.csv`` and ``batches.jsonl`` in the logs folder, appended row by row (rank 0)."""

    def __init__(self, logs_dir: Path, *, resume_step: int = 0):
        self.csv_path = logs_dir / "train_loss.csv"
        self.batches_path = logs_dir / "batches.jsonl"
        truncate_after(self.csv_path, resume_step, csv_file=True)
        truncate_after(self.batches_path, resume_step, csv_file=False)
        if not self.csv_path.exists():
            with self.csv_path.open("w", newline="") as fh:
                csv.writer(fh).writerow(CSV_COLUMNS)

    def write(self, step: int, logs: dict, batches: list[dict]) -> None:
        row = {"step": step, "lr": logs.get("learning_rate"), **logs}
        with self.csv_path.open("a", newline="") as fh:
            csv.writer(fh).writerow([_format(row.get(c)) for c in CSV_COLUMNS])
        with self.batches_path.open("a") as fh:
            for batch in batches:
                fh.write(json.dumps(batch) + "\n")


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def truncate_after(path: Path, step: int, *, csv_file: bool) -> None:
    """Drop rows logged after ``step`` (a resumed run rewrites them); atomic rewrite."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if csv_file:
        kept = lines[:1] + [ln for ln in lines[1:] if ln.strip() and int(ln.split(",", 1)[0]) <= step]
    else:
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)


def read_loss_csv(path: Path) -> dict[str, list[float]]:
    """Columns of a ``train_loss.csv`` as float lists (empty cells become NaN).

    Raises:
        BlocksftError: the file is not UTF-8 text or a cell is not a number.
    """
    try:
        with Path(path).open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns: dict[str, list[float]] = {c: [] for c in reader.fieldnames or []}
            for row in reader:
                for name, cell in row.items():
                    if name is None or name not in columns:
                        continue
                    columns[name].append(_number(cell, path, reader.line_num, name))
    except UnicodeDecodeError as err:
        raise BlocksftError(f"{path} is not UTF-8 text (byte {err.start}); is it a train_loss.csv?") from err
    return columns or {c: [] for c in CSV_COLUMNS}


def _number(cell: str | None, path: Path, line: int, column: str) -> float:
    if cell in (None, ""):
        return math.nan
    try:
        return float(cell)
    except ValueError:
        raise BlocksftError(
            f"{path} line {line}: {cell!r} in column {column!r} is not a number; is it a train_loss.csv?"
        ) from None


def budget_summary(csv_path: Path) -> dict:
    """Totals of a run from its loss CSV, for EQUAL-TOKENS and EQUAL-FLOPS comparisons."""
    columns = read_loss_csv(csv_path)
    totals = {c: sum(columns.get(c, [])) for c in ("samples", "supervised_tokens", "tokens", "padded_tokens")}
    return {
        # The last logged step, not the row count: with --log-every N one row covers N steps.
        "steps": int(max(columns.get("step", []), default=0)),
        **{k: int(v) for k, v in totals.items()},
        "estimated_flops": float(sum(columns.get("flops", []))),
    }


def format_budget(budget: dict) -> str:
    """One paragraph for the end of a run."""
    return (
        f"budget: {budget['steps']} steps, {budget['samples']:,} samples; EQUAL-TOKENS: "
        f"{budget['supervised_tokens']:,} supervised (loss-bearing) tokens of {budget['tokens']:,} processed "
        f"({budget['padded_tokens']:,} with padding); EQUAL-FLOPS: ~{budget['estimated_flops']:.3e} FLOPs"
    )
