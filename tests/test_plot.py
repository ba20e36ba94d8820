"""`blocksft plot`: several runs in one PNG, smoothing, budget axes, clear errors."""

import csv
import math

import pytest

from blocksft.cli import main
from blocksft.train.logs import CSV_COLUMNS
from blocksft.train.plot import cumulative, loss_csv_of, smooth_ema


def write_run(logs_dir, losses):
    logs_dir.mkdir(parents=True)
    with (logs_dir / "train_loss.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for step, loss in enumerate(losses, 1):
            writer.writerow([step, loss, 1e-5, 0.5, 10 * step, 100, 128, 4, 1e9, 1000.0])
    return logs_dir


def test_plot_draws_several_runs_into_one_png(tmp_path, capsys):
    a = write_run(tmp_path / "ckpts_a_logs", [3.0, 2.5, 2.0, 1.8])
    b = write_run(tmp_path / "ckpts_b_logs", [3.2, 2.9, 2.7])
    out = tmp_path / "plots" / "loss.png"
    argv = ["plot", str(a), str(tmp_path / "ckpts_b"), "--output", str(out), "--smooth", "0.5"]
    assert main(argv + ["--x", "supervised_tokens", "--labels", "blockwise", "fullseq"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert str(out) in capsys.readouterr().out
    assert main(["plot", str(b / "train_loss.csv"), "--output", str(out), "--metric", "grad_norm"]) == 0


def test_plot_errors_are_one_line(tmp_path, capsys):
    a = write_run(tmp_path / "run_logs", [1.0])
    assert main(["plot", str(tmp_path / "nothing"), "--output", str(tmp_path / "x.png")]) == 2
    assert "no train_loss.csv" in capsys.readouterr().err
    assert main(["plot", str(a), "--metric", "accuracy", "--output", str(tmp_path / "x.png")]) == 2
    assert "no column 'accuracy'" in capsys.readouterr().err
    assert main(["plot", str(a), "--labels", "x", "y", "--output", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_smoothing_and_budget_axes():
    assert smooth_ema([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])  # debiased: no warm-up dip
    smoothed = smooth_ema([0.0, 10.0, math.nan, 10.0], 0.5)
    assert smoothed[0] == 0.0 and 0.0 < smoothed[1] < 10.0 and smoothed[2] == smoothed[1]
    assert smooth_ema([4.0, 2.0], 0.0) == [4.0, 2.0]
    assert cumulative([1.0, math.nan, 2.0]) == [1.0, 1.0, 3.0]


def test_runs_are_found_by_logs_folder_checkpoint_root_or_csv(tmp_path):
    logs = write_run(tmp_path / "ck_logs", [1.0])
    csv_path = logs / "train_loss.csv"
    assert loss_csv_of(logs) == loss_csv_of(tmp_path / "ck") == loss_csv_of(csv_path) == csv_path
