"""Statistics, result files (resume, shards, merge, summary), --compare and the grid table: no model."""

import json
import math

import pytest

from blocksft.config.eval import EvalConfig, grid_stem, model_tag, output_path
from blocksft.errors import BlocksftError
from blocksft.evaluate import grid, results, stats

# --- statistics ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("correct", "total", "low", "high"),
    [
        (5, 10, 0.236593, 0.763407),  # textbook value of the Wilson interval at p = 1/2, n = 10
        (0, 10, 0.0, 0.277533),  # upper bound z^2 / (n + z^2)
        (10, 10, 0.722467, 1.0),
        (760, 1000, 0.732567, 0.785443),  # checked against scipy.stats.binomtest(...).proportion_ci("wilson")
    ],
)
def test_wilson_interval_known_values(correct, total, low, high):
    got_low, got_high = stats.wilson_interval(correct, total)
    assert got_low == pytest.approx(low, abs=1e-6)
    assert got_high == pytest.approx(high, abs=1e-6)


def test_wilson_interval_edges():
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    assert stats.wilson_interval(0, 6)[0] == 0.0 and stats.wilson_interval(6, 6)[1] == 1.0
    with pytest.raises(ValueError):
        stats.wilson_interval(3, 2)


def test_wilson_matches_scipy_when_available():
    scipy_stats = pytest.importorskip("scipy.stats")
    result = scipy_stats.binomtest(37, 91).proportion_ci(confidence_level=0.95, method="wilson")
    assert stats.wilson_interval(37, 91) == pytest.approx((result.low, result.high), abs=1e-9)


def test_mcnemar_exact_known_values():
    # b=1, c=10: 2 * (C(11,0) + C(11,1)) / 2^11
    assert stats.mcnemar_exact(1, 10) == pytest.approx(24 / 2048)
    assert stats.mcnemar_exact(10, 1) == stats.mcnemar_exact(1, 10)
    assert stats.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert stats.mcnemar_exact(5, 5) == 1.0
    assert stats.mcnemar_exact(0, 0) == 1.0
    # the textbook 2x2 table with discordant counts 6 and 16
    assert stats.mcnemar_exact(6, 16) == pytest.approx(0.052479, abs=1e-6)


def test_mcnemar_chi2_known_values():
    statistic, p = stats.mcnemar_chi2(6, 16, continuity=False)
    assert statistic == pytest.approx(100 / 22)
    assert p == pytest.approx(0.033006, abs=1e-6)
    statistic, p = stats.mcnemar_chi2(6, 16)
    assert statistic == pytest.approx(81 / 22)
    assert p == pytest.approx(0.055009, abs=1e-6)
    assert stats.mcnemar_chi2(3, 3) == (0.0, 1.0)


def test_paired_comparison_counts():
    a = {"1": True, "2": True, "3": False, "4": False, "5": True}
    b = {"1": True, "2": False, "3": True, "4": False, "6": True}
    cmp = stats.paired_comparison(a, b)
    assert (cmp.n, cmp.correct_a, cmp.correct_b, cmp.a_only, cmp.b_only) == (4, 2, 2, 1, 1)
    assert cmp.p_exact == 1.0
    with pytest.raises(ValueError, match="share no problem id"):
        stats.paired_comparison({"1": True}, {"2": True})


# --- result files ----------------------------------------------------------------------------------


def make_row(index, correct=True, sid="s1", metric_names=("strict", "flexible")):
    return {
        "id": f"p{index}",
        "index": index,
        "question": "q",
        "prompt": "p",
        "output": "The answer is: 1",
        "gold": "1",
        "extracted": {m: "1" for m in metric_names},
        "correct": {m: correct for m in metric_names},
        "nfe": 16,
        "seconds": 0.5,
        "settings_id": sid,
    }


def write_jsonl(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_settings_id_is_order_independent_and_sensitive():
    assert results.settings_id({"a": 1, "b": 2}) == results.settings_id({"b": 2, "a": 1})
    assert results.settings_id({"a": 1}) != results.settings_id({"a": 2})
    # Files written before the confidence setting existed were decoded in float64: they still resume.
    assert results.settings_id({"a": 1, "confidence": "float64"}) == results.settings_id({"a": 1})
    assert results.settings_id({"a": 1, "confidence": "llada"}) != results.settings_id({"a": 1})


def test_paths(tmp_path):
    out = tmp_path / "res.jsonl"
    assert results.summary_path(out) == tmp_path / "res.summary.json"
    assert results.summary_path(tmp_path / "res") == tmp_path / "res.summary.json"
    assert results.part_path(out, 3) == tmp_path / "res.jsonl.part3"
    for rank in (0, 1, 10):
        results.part_path(out, rank).write_text("")
    (tmp_path / "res.jsonl.partial").write_text("")
    assert [p.name for p in results.part_paths(out)] == [
        "res.jsonl.part0",
        "res.jsonl.part1",
        "res.jsonl.part10",
    ]


def test_merge_orders_by_index_keeps_existing_lines_and_removes_parts(tmp_path):
    out = tmp_path / "res.jsonl"
    existing = json.dumps(make_row(0), indent=None, separators=(",", ":"))  # a spelling we would not write
    out.write_text(existing + "\n")
    write_jsonl(results.part_path(out, 1), [make_row(3), make_row(1)])
    write_jsonl(results.part_path(out, 0), [make_row(2), make_row(0, correct=False)])  # duplicate id p0
    rows = results.merge_parts(out)
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["correct"]["strict"] is True  # the row already in the output wins
    assert out.read_text().splitlines()[0] == existing
    assert results.part_paths(out) == []


def test_load_done_reads_output_and_parts_and_refuses_other_settings(tmp_path):
    out = tmp_path / "res.jsonl"
    write_jsonl(out, [make_row(0)])
    write_jsonl(results.part_path(out, 1), [make_row(1)])
    assert sorted(results.load_done(out, "s1")) == ["p0", "p1"]
    results.write_summary(out, {"settings": {"steps": 128, "gen_length": 256}})
    with pytest.raises(BlocksftError, match=r"other settings.*steps: 128 -> 256"):
        results.load_done(out, "s2", {"steps": 256, "gen_length": 256})


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    part = tmp_path / "res.jsonl.part0"
    write_jsonl(part, [make_row(0)], tail='{"id": "p1", "ind')
    assert [r["id"] for r in results.read_rows(part)] == ["p0"]
    with pytest.warns(UserWarning, match="cut short"):
        results.repair_part(part)
    assert part.read_text() == json.dumps(make_row(0)) + "\n"
    results.append_rows(part, [make_row(1)])
    assert [r["id"] for r in results.read_rows(part)] == ["p0", "p1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": 1}\n', "not a blocksft eval row"),
        ("[1, 2]\n", "not a blocksft eval row"),
        ('not json\n{"id": 1}\n', "line 1 is not valid JSON"),
    ],
)
def test_foreign_files_are_refused(tmp_path, content, message):
    path = tmp_path / "other.jsonl"
    path.write_text(content)
    with pytest.raises(BlocksftError, match=message):
        results.read_rows(path)
    with pytest.raises(BlocksftError, match=message):
        results.load_done(path, "s1")


def test_metric_summary():
    rows = [make_row(i, correct=i < 3) for i in range(4)]
    summary = results.metric_summary(rows)
    assert summary["strict"]["correct"] == 3
    assert summary["strict"]["accuracy"] == 0.75
    assert summary["strict"]["ci95"] == list(stats.wilson_interval(3, 4))
    assert "strict 75.0%" in results.format_accuracy(summary)


def test_compare_files(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    # A solves 0..7, B solves 0..1; shared ids 0..9 (B also has 10, A also has 11)
    write_jsonl(a, [make_row(i, correct=i < 8) for i in [*range(10), 11]])
    write_jsonl(b, [make_row(i, correct=i < 2) for i in range(11)])
    result = results.compare_files(a, b)
    assert result["shared"] == 10
    strict = result["metrics"]["strict"]
    assert (strict["accuracy_a"], strict["accuracy_b"]) == (0.8, 0.2)
    assert (strict["a_only"], strict["b_only"]) == (6, 0)
    assert strict["mcnemar_exact_p"] == pytest.approx(2 / 64)
    text = results.format_comparison(result)
    assert "shared problems: 10" in text and "80.0%" in text


def test_compare_refuses_disjoint_or_other_task(tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write_jsonl(a, [make_row(0)])
    write_jsonl(b, [make_row(1)])
    write_jsonl(c, [make_row(0, metric_names=("math_verify", "exact"))])
    with pytest.raises(BlocksftError, match="share no problem id"):
        results.compare_files(a, b)
    with pytest.raises(BlocksftError, match="no metric in common"):
        results.compare_files(a, c)
    with pytest.raises(BlocksftError, match="does not exist"):
        results.compare_files(a, tmp_path / "missing.jsonl")


# --- configuration and grid -------------------------------------------------------------------------


def test_eval_config_block_lengths_and_paths():
    config = EvalConfig(model=["ckpts/blockwise_step0200/"], block_length="32")
    assert config.block_lengths == [32] and not config.is_grid
    assert (
        str(output_path(config, config.model[0], 32, 256, 256))
        == "results/gsm8k-blockwise_step0200-g256-b32-s256.jsonl"
    )
    config = EvalConfig(model=["a/m1", "b/m2"], block_length="8, 16,32", output="out/res.jsonl")
    assert config.block_lengths == [8, 16, 32] and config.is_grid
    assert str(output_path(config, "a/m1", 16, 256, 256)) == "out/res.m1.b16.jsonl"
    assert str(grid_stem(config)) == "out/res"
    assert model_tag("GSAI-ML/LLaDA-8B-Instruct") == "LLaDA-8B-Instruct"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_length": "8,x"}, "positive integers"),
        ({"block_length": "0"}, "positive integers"),
        ({"block_length": "8,8"}, "twice"),
        ({"model": ["a/m", "b/m"]}, "collide"),
        ({"limit": 0}, "--limit"),
        ({"batch_size": 0}, "--batch-size"),
        ({"prompt_style": "fancy"}, "--prompt-style"),
    ],
)
def test_eval_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**kwargs)


def test_eval_config_accepts_template_prompt_style():
    assert EvalConfig(prompt_style="Q: {query}\nA:").prompt_style == "Q: {query}\nA:"


def grid_cells():
    def metrics(acc):
        return {
            "strict": {"correct": int(acc * 10), "total": 10, "accuracy": acc, "ci95": [acc - 0.1, acc + 0.1]}
        }

    return [
        {"model": "train-B8", "block_length": 8, "metrics": metrics(0.7)},
        {"model": "train-B8", "block_length": 32, "metrics": metrics(0.5)},
        {"model": "train-B32", "block_length": 8, "metrics": metrics(0.4)},
        {"model": "train-B32", "block_length": 32, "metrics": metrics(0.8)},
    ]


def test_grid_table_markdown_csv():
    models, blocks, table = grid.grid_table(grid_cells())
    assert models == ["train-B8", "train-B32"] and blocks == [8, 32]
    assert table["strict"][("train-B32", 32)]["accuracy"] == 0.8
    markdown = grid.grid_markdown(grid_cells())
    assert "| model | B=8 | B=32 |" in markdown
    assert "| train-B8 | 70.0 [60.0, 80.0] | 50.0 [40.0, 60.0] |" in markdown
    lines = grid.grid_csv(grid_cells()).splitlines()
    assert lines[0] == "model,block_length,metric,correct,total,accuracy,ci_low,ci_high"
    assert lines[4].startswith("train-B32,32,strict,8,10,0.800000")


def test_write_grid_files(tmp_path):
    paths = grid.write_grid(grid_cells(), tmp_path / "grid" / "gsm8k", title="test grid")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["markdown"].read_text().startswith("# test grid")
    assert paths["csv"].name == "gsm8k.grid.csv"
    assert not math.isnan(float(paths["csv"].read_text().splitlines()[1].split(",")[5]))
