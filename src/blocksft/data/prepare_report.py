"""What `blocksft prepare` made and its end-of-run report: counts, answer-length and blocks-per-answer
histograms.

Text for the terminal (:func:`format_summary`) and, with ``--plot``, a PNG drawn with matplotlib's
Agg canvas (no global backend is switched).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from blocksft.config.prepare import PrepareConfig
from blocksft.data.records import answer_lengths


@dataclass
class PrepareCounts:
    """What happened to the rows, up to the row where ``max_samples`` was reached."""

    rows_read: int = 0
    skipped_by_type: int = 0
    dropped_too_long: int = 0
    skipped_boundary_mismatch: int = 0
    split_at_boundary: int = 0
    skipped_special_text: int = 0
    kept: int = 0


@dataclass
class PrepareResult:
    """The records (``[{"prompt_len": int, "full_ids": LongTensor}]``), counts and where they went."""

    records: list[dict]
    counts: PrepareCounts
    output: Path | None = None
    sidecar: Path | None = None
    plot: Path | None = None
    seconds: float = 0.0


def length_bins(values: list[int], bins: int = 10) -> list[tuple[int, int, int]]:
    """``(low, high, count)`` for equal-width integer bins covering ``[min, max]``, ends included."""
    low, high = min(values), max(values)
    width = max(1, math.ceil((high - low + 1) / bins))
    counts = Counter((v - low) // width for v in values)
    n_bins = (high - low) // width + 1
    return [(low + b * width, low + (b + 1) * width - 1, counts.get(b, 0)) for b in range(n_bins)]


def blocks_per_answer(lengths: list[int], block_size: int) -> list[tuple[int, int]]:
    """``(blocks, count)`` for 1..max blocks, a partial last block counting as one."""
    counts = Counter(math.ceil(n / block_size) for n in lengths)
    return [(b, counts.get(b, 0)) for b in range(1, max(counts) + 1)]


def format_bars(rows: list[tuple[str, int]], width: int = 40) -> list[str]:
    """A text bar chart: one ``label  ####  count`` line per row, bars scaled to the largest count."""
    peak = max((count for _, count in rows), default=0) or 1
    label_width = max(len(label) for label, _ in rows)
    return [
        f"  {label:>{label_width}}  {'#' * round(width * count / peak):<{width}}  {count}"
        for label, count in rows
    ]


def format_summary(result: PrepareResult, config: PrepareConfig) -> str:
    """The end-of-run report: counts, then answer-length and blocks-per-answer histograms."""
    counts = result.counts
    lines = []
    if result.output is not None:
        lines.append(
            f"wrote {counts.kept} records to {result.output} (+ {result.sidecar}) in {result.seconds:.1f} s"
        )
    table = [
        ("rows read", counts.rows_read, ""),
        ("skipped by type", counts.skipped_by_type, f"--filter_type {config.filter_type!r}"),
        ("dropped as too long", counts.dropped_too_long, f"> --max_len {config.max_len} tokens"),
    ]
    if counts.skipped_boundary_mismatch:
        table.append(
            ("skipped: boundary merge", counts.skipped_boundary_mismatch, "--on-boundary-mismatch skip")
        )
    if counts.skipped_special_text:
        table.append(("skipped: special text", counts.skipped_special_text, "--on-special-text skip"))
    if counts.split_at_boundary:
        table.append(
            (
                "kept, split at boundary",
                counts.split_at_boundary,
                "prompt and answer encoded apart: tokens merged across the boundary",
            )
        )
    cap = f"--max_samples {config.max_samples}" if config.max_samples else "no --max_samples cap"
    table.append(("kept", counts.kept, cap))
    lines += [f"  {name:<24}{value:>9}  {note}".rstrip() for name, value, note in table]
    lengths = answer_lengths(result.records)
    ordered = sorted(lengths)
    lines.append(
        f"answer length (tokens, <|eot_id|> included): min {ordered[0]}, median "
        f"{ordered[len(ordered) // 2]}, max {ordered[-1]}"
    )
    lines += format_bars([(f"{lo}-{hi}", n) for lo, hi, n in length_bins(lengths)])
    lines.append(f"blocks per answer (block size {config.block_size}):")
    lines += format_bars([(str(b), n) for b, n in blocks_per_answer(lengths, config.block_size)])
    if result.plot is not None:
        lines.append(f"histograms: {result.plot}")
    return "\n".join(lines)


def write_histogram_plot(records: list[dict], block_size: int, path: Path) -> Path:
    """Answer-length and blocks-per-answer histograms as a PNG, written atomically."""
    lengths = answer_lengths(records)
    figure = Figure(figsize=(10, 4))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    left.hist(lengths, bins=min(50, max(lengths) - min(lengths) + 1), color="tab:blue")
    left.set(xlabel="answer length (tokens)", ylabel="samples", title=f"{len(lengths)} samples")
    blocks = blocks_per_answer(lengths, block_size)
    right.bar([b for b, _ in blocks], [n for _, n in blocks], color="tab:orange")
    right.set(xlabel=f"blocks per answer (block size {block_size})", ylabel="samples")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.partial-{os.getpid()}.png")
    try:
        figure.savefig(staged, format="png")
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return path
