"""The block-length grid: accuracy of each model (rows) at each inference block length (columns).

This is the paper's train-B x inference-B consistency study: evaluate checkpoints trained with
different block sizes at several inference block sizes and look for a dominant diagonal. The
generation length and the total number of steps are held fixed across block lengths, so every cell
commits the same number of tokens per step; only how the canvas is cut into blocks changes.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def grid_table(cells: list[dict]) -> tuple[list[str], list[int], dict[str, dict[tuple[str, int], dict]]]:
    """Arrange cells ``{"model", "block_length", "metrics"}`` into rows (models) x columns (B).

    Returns:
        ``(models in first-seen order, sorted block lengths, {metric: {(model, B): metric dict}})``.
    """
    models = list(dict.fromkeys(c["model"] for c in cells))
    blocks = sorted({int(c["block_length"]) for c in cells})
    table: dict[str, dict[tuple[str, int], dict]] = {}
    for cell in cells:
        for metric, values in cell["metrics"].items():
            table.setdefault(metric, {})[(cell["model"], int(cell["block_length"]))] = values
    return models, blocks, table


def _cell_text(m: dict | None) -> str:
    if m is None:
        return ""
    return f"{100 * m['accuracy']:.1f} [{100 * m['ci95'][0]:.1f}, {100 * m['ci95'][1]:.1f}]"


def grid_markdown(cells: list[dict]) -> str:
    """One markdown table per metric: accuracy % with the 95 % interval, rows = models."""
    models, blocks, table = grid_table(cells)
    out = []
    for metric, values in table.items():
        out.append(f"### {metric} accuracy (%), rows: model, columns: inference block length\n")
        out.append("| model | " + " | ".join(f"B={b}" for b in blocks) + " |")
        out.append("|---|" + "---|" * len(blocks))
        for model in models:
            entries = [_cell_text(values.get((model, b))) for b in blocks]
            out.append(f"| {model} | " + " | ".join(entries) + " |")
        out.append("")
    return "\n".join(out)


def grid_csv(cells: list[dict]) -> str:
    """Long-format CSV: ``model,block_length,metric,correct,total,accuracy,ci_low,ci_high``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", "block_length", "metric", "correct", "total", "accuracy", "ci_low", "ci_high"])
    for cell in cells:
        for metric, m in cell["metrics"].items():
            writer.writerow(
                [
                    cell["model"],
                    cell["block_length"],
                    metric,
                    m["correct"],
                    m["total"],
                    f"{m['accuracy']:.6f}",
                    f"{m['ci95'][0]:.6f}",
                    f"{m['ci95'][1]:.6f}",
                ]
            )
    return buf.getvalue()


def grid_heatmap(cells: list[dict], path: str | Path, title: str = "") -> Path:
    """A heatmap PNG, one panel per metric: models (rows) x inference block length (columns)."""
    models, blocks, table = grid_table(cells)
    metrics = list(table)
    fig = Figure(
        figsize=(1.6 + 1.1 * len(blocks) * len(metrics) + 1.5 * len(metrics), 1.2 + 0.6 * len(models))
    )
    FigureCanvasAgg(fig)  # drawn off-screen, without switching pyplot's backend
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = np.full((len(models), len(blocks)), np.nan)
        for (model, b), m in table[metric].items():
            values[models.index(model), blocks.index(b)] = 100 * m["accuracy"]
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(blocks)), [str(b) for b in blocks])
        ax.set_yticks(range(len(models)), models)
        ax.set_xlabel("inference block length")
        ax.set_title(f"{metric} accuracy (%)")
        for i in range(len(models)):
            for j in range(len(blocks)):
                if not np.isnan(values[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{values[i, j]:.1f}",
                        ha="center",
                        va="center",
                        color="white" if values[i, j] < 50 else "black",
                        fontsize=9,
                    )
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    return path


def write_grid(cells: list[dict], stem: str | Path, title: str = "") -> dict[str, Path]:
    """Write ``<stem>.grid.md``, ``<stem>.grid.csv`` and ``<stem>.grid.png``; returns their paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": stem.with_name(stem.name + ".grid.md"),
        "csv": stem.with_name(stem.name + ".grid.csv"),
        "png": stem.with_name(stem.name + ".grid.png"),
    }
    header = f"# {title}\n\n" if title else ""
    paths["markdown"].write_text(header + grid_markdown(cells), encoding="utf-8")
    paths["csv"].write_text(grid_csv(cells), encoding="utf-8")
    grid_heatmap(cells, paths["png"], title=title)
    return paths
