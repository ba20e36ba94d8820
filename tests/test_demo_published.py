"""The README's demo results: spread over seeds, verdict tally, markers, provenance."""

from __future__ import annotations

import pytest

from blocksft.bench.demo import (
    BEGIN,
    END,
    cell_spread,
    check_comparable,
    leaders_by_block,
    render,
    replace_between_markers,
    verdict_tally,
)
from blocksft.demo.provenance import code_revision, describe_environment, describe_revision
from blocksft.errors import BlocksftError

ENVIRONMENT = {
    "versions": {"torch": "2.13.0+cpu", "transformers": "5.24.0"},
    "torch_threads": 1,
    "cpu": "Some CPU",
    "cpu_capability": "AVX512",
    "cpu_count": 2,
    "platform": "Linux",
    "load_average_at_start": 0.5,
    "revision": {"commit": "0123456789abcdef", "dirty": False},
}


def _metric(correct: int, total: int = 200) -> dict:
    return {"correct": correct, "total": total, "accuracy": correct / total, "ci95": [0.0, 1.0]}


def fake_run(seed: int, blockwise: dict[int, int], fullseq: dict[int, int], p: float = 0.01) -> dict:
    """A demo.json as :func:`load_run` returns it: correct counts of 200 per block length."""
    accuracy = {
        "base": {b: {"strict": _metric(0)} for b in blockwise},
        "blockwise": {b: {"strict": _metric(c)} for b, c in blockwise.items()},
        "fullseq": {b: {"strict": _metric(c)} for b, c in fullseq.items()},
    }
    paired = {
        b: {
            "accuracy_a": blockwise[b] / 200,
            "accuracy_b": fullseq[b] / 200,
            "a_only": 1,
            "b_only": 2,
            "p": p,
        }
        for b in blockwise
    }
    return {
        "seed": seed,
        "seconds": 300.0 + seed,
        "stages": {"pretrain": 60.0, "sft blockwise": 90.0, "sft fullseq": 95.0, "eval": 50.0 + seed},
        "environment": dict(ENVIRONMENT),
        "settings": {
            "seed": seed,
            "out": f"runs/seed-{seed}",
            "overwrite": True,
            "n_test": 200,
            "threads": 1,
        },
        "results": {
            "training_block": 8,
            "accuracy": accuracy,
            "paired": paired,
            "verdict": f"verdict {seed}.",
        },
        "budgets": {},
    }


RUNS = [
    fake_run(0, {8: 100, 32: 20}, {8: 150, 32: 120}),
    fake_run(1, {8: 120, 32: 30}, {8: 110, 32: 100}, p=0.2),
    fake_run(2, {8: 90, 32: 30}, {8: 130, 32: 30}),
]


def test_cell_spread_gives_mean_and_range_in_percent():
    table = cell_spread(RUNS)
    assert table["blockwise"][8] == pytest.approx({"mean": 51.666666, "min": 45.0, "max": 60.0})
    assert table["fullseq"][32] == pytest.approx({"mean": 41.666666, "min": 15.0, "max": 60.0})
    assert table["base"][32] == {"mean": 0.0, "min": 0.0, "max": 0.0}


def test_verdict_tally_counts_wins_significance_and_the_gap():
    tally = verdict_tally(RUNS)
    assert tally["fullseq_wins"] == 2 and tally["blockwise_wins"] == 1
    assert tally["fullseq_significant"] == 2 and tally["blockwise_significant"] == 0
    # Full-sequence minus Blockwise at block 8: +25, -5, +20 points.
    assert tally["difference"] == pytest.approx({"mean": 40 / 3, "min": -5.0, "max": 25.0})
    assert leaders_by_block(RUNS) == {
        8: {"fullseq": 2, "blockwise": 1, "tie": 0},
        32: {"fullseq": 2, "blockwise": 0, "tie": 1},
    }


def test_render_states_provenance_tables_and_tally():
    text = render(RUNS, [], "blocksft bench demo --seeds 0,1,2")
    assert "torch 2.13.0+cpu, transformers 5.24.0, 1 torch thread, Some CPU (AVX512, 2 CPUs)" in text
    assert "commit 0123456 (clean)" in text
    assert "**5.0-5.0 minutes**" not in text and "**5.0 minutes** (3 runs" in text
    assert "evaluation 50-52 s" in text
    assert "| Blockwise SFT | 51.7 [45.0, 60.0] | 13.3 [10.0, 15.0] |" in text
    assert "| **block 8** (training) |" in text.replace("| model ", "")
    assert "in 2 of 3 seeds (2 significant at the 0.05 level)" in text
    assert "verdict 0." in text and "verdict 1." not in text  # the first seed's run in full


def test_runs_of_different_threads_or_settings_are_not_summarised_together():
    other = fake_run(3, {8: 1, 32: 1}, {8: 1, 32: 1})
    other["environment"] = {**ENVIRONMENT, "torch_threads": 2, "load_average_at_start": 3.0}
    with pytest.raises(BlocksftError, match="environment.torch_threads"):
        check_comparable([RUNS[0], other])
    other = fake_run(3, {8: 1, 32: 1}, {8: 1, 32: 1})
    other["settings"]["n_test"] = 50
    with pytest.raises(BlocksftError, match="settings.n_test"):
        check_comparable([RUNS[0], other])
    check_comparable([RUNS[0], other], same_settings=False)  # an equal-tokens run may differ in settings
    check_comparable(RUNS)  # seeds, folders and load differ: fine


def test_a_missing_readme_is_one_clear_error_before_any_run(tmp_path):
    from blocksft.bench.demo import main

    with pytest.raises(BlocksftError, match="--readme .*no such file"):
        main(["--readme", str(tmp_path / "missing.md"), "--runs", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


def test_replace_between_markers_keeps_the_rest_and_needs_one_pair():
    text = f"intro\n{BEGIN}\nold table\n{END}\noutro\n"
    assert replace_between_markers(text, "new\n") == f"intro\n{BEGIN}\nnew\n{END}\noutro\n"
    for bad in ("no markers", f"{END} {BEGIN}", f"{BEGIN}{END}{BEGIN}{END}"):
        with pytest.raises(BlocksftError, match="markers|pair"):
            replace_between_markers(bad, "x")


def test_code_revision_of_a_checkout_and_outside_one(tmp_path):
    import subprocess

    assert code_revision(tmp_path) is None
    assert describe_revision(None) == "code revision unknown (not a git checkout)"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], check=True)
    revision = code_revision(tmp_path)
    assert len(revision["commit"]) == 40 and revision["dirty"] is False
    (tmp_path / "b.txt").write_text("untracked files do not count")
    assert code_revision(tmp_path)["dirty"] is False
    (tmp_path / "a.txt").write_text("2")
    assert code_revision(tmp_path)["dirty"] is True
    assert describe_revision(code_revision(tmp_path)).endswith("(uncommitted changes)")
    assert describe_environment({**ENVIRONMENT, "torch_threads": 2}).count("2 torch threads") == 1
    assert "torch threads auto (the idle cores, stage by stage)" in describe_environment(
        {**ENVIRONMENT, "torch_threads": "auto"}
    )
