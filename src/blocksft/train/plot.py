"""Loss curves of several runs in one PNG (``blocksft plot``).

Each run is a logs folder (``<ckpt_dir>_logs``), its checkpoint root (``<ckpt_dir>``) or a
``train_loss.csv``. The x axis can be steps or a cumulative budget (samples, supervised tokens,
processed tokens, FLOPs), which is how EQUAL-TOKENS and EQUAL-FLOPS comparisons are read.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from blocksft.config.plot import X_AXES, PlotConfig
from blocksft.errors import BlocksftError
from blocksft.outputs import check_output_path

from .logs import read_loss_csv


def loss_csv_of(run: str | Path) -> Path:
    """The ``train_loss.csv`` of a logs folder, checkpoint root or CSV path."""
    run = Path(run)
    for candidate in (run, run / "train_loss.csv", Path(f"{run}_logs") / "train_loss.csv"):
        if candidate.is_file():
            return candidate
    raise BlocksftError(f"{run}: no train_loss.csv there (give a <ckpt_dir>_logs folder or a CSV file)")


def run_label(csv_path: Path) -> str:
    folder = csv_path.parent.name
    return folder.removesuffix("_logs") if csv_path.name == "train_loss.csv" else csv_path.stem


def smooth_ema(values: list[float], weight: float) -> list[float]:
    """Debiased exponential moving average (as TensorBoard draws it); NaNs are skipped."""
    out, avg, norm = [], 0.0, 0.0
    for v in values:
        if not math.isnan(v):
            avg, norm = weight * avg + (1 - weight) * v, weight * norm + (1 - weight)
        out.append(avg / norm if norm else math.nan)
    return out


def cumulative(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for v in values:
        total += 0.0 if math.isnan(v) else v
        out.append(total)
    return out


def plotted_columns(path: Path, config: PlotConfig) -> dict[str, list[float]]:
    """The columns of one run's CSV, refused when there is nothing to draw."""
    columns = read_loss_csv(path)
    if config.metric not in columns or config.x not in columns or "step" not in columns:
        missing = next(c for c in (config.metric, config.x, "step") if c not in columns)
        raise BlocksftError(f"{path} has no column {missing!r}; columns: {', '.join(columns) or 'none'}")
    if not columns["step"]:
        raise BlocksftError(f"{path} has no rows (the run logged no step yet); nothing to plot")
    if all(math.isnan(v) for v in columns[config.metric]):
        raise BlocksftError(f"{path}: column {config.metric!r} has no values; choose another --metric")
    return columns


def plot_runs(runs: list[str | Path], config: PlotConfig) -> Path:
    """Draw ``config.metric`` of every run against ``config.x`` into ``config.output``.

    Returns:
        The PNG written (atomically).
    """
    if not runs:
        raise BlocksftError("give at least one run (a <ckpt_dir>_logs folder or a train_loss.csv)")
    if config.labels is not None and len(config.labels) != len(runs):
        raise BlocksftError(f"--labels: {len(config.labels)} labels for {len(runs)} runs")
    output = check_output_path(config.output, "--output", kind="file")
    paths = [loss_csv_of(run) for run in runs]
    curves = [(path, plotted_columns(path, config)) for path in paths]
    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)  # drawn off-screen, without switching pyplot's backend
    ax = fig.subplots()
    for k, (path, columns) in enumerate(curves):
        xs = columns["step"] if config.x == "step" else cumulative(columns[config.x])
        ys = columns[config.metric]
        label = config.labels[k] if config.labels else run_label(path)
        if config.smooth:
            (line,) = ax.plot(xs, ys, alpha=0.25)
            ax.plot(xs, smooth_ema(ys, config.smooth), color=line.get_color(), label=label)
        else:
            ax.plot(xs, ys, label=label)
    ax.set_xlabel(X_AXES[config.x])
    ax.set_ylabel(config.metric)
    if config.log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both" if config.log_y else "major")
    ax.legend()
    if config.title:
        ax.set_title(config.title)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp{output.suffix or '.png'}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(output)
    return output
