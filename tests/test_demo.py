"""`blocksft demo`: the task, the report's statistics, and a `--quick` run end to end."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from blocksft.demo.config import DemoConfig
from blocksft.demo.pipeline import sft_steps
from blocksft.demo.report import paired_tests, verdict
from blocksft.demo.task import (
    DAYS,
    TaskSpec,
    make_problem,
    make_splits,
    more_problems,
    pretraining_documents,
)
from blocksft.evaluate.gsm8k import score


def _check_worked_answer(question: str, answer: str, value: int) -> None:
    """Every line's arithmetic is right, chains from the story's start, and follows its days."""
    start = int(re.match(r"\w+ has (\d+) ", question).group(1))
    changes = [(verb, int(n)) for verb, n in re.findall(r"On \w+ \w+ (gets|loses) (\d+)\.", question)]
    *lines, final = answer.splitlines()
    assert final == f"#### {value}"
    assert len(lines) == len(changes)
    current = start
    for k, (line, (verb, n)) in enumerate(zip(lines, changes)):
        day, a, sign, b, c = re.fullmatch(r"(\w+): (\d+) ([+-]) (\d+) = (\d+)", line).groups()
        assert day == DAYS[k]
        assert int(a) == current and int(b) == n and sign == ("+" if verb == "gets" else "-")
        current = current + n if verb == "gets" else current - n
        assert int(c) == current
    assert current == value


def test_problems_are_correct_within_range_and_scored_by_the_gsm8k_scorer():
    spec = TaskSpec(min_steps=3, max_steps=6, max_value=20, max_operand=5)
    rng = random.Random(7)
    steps_seen = set()
    for _ in range(500):
        p = make_problem(rng, spec)
        _check_worked_answer(p.question, p.answer, p.value)
        numbers = [int(x) for x in re.findall(r"\d+", p.answer)]
        assert 0 <= min(numbers) and max(numbers) <= spec.max_value
        operands = [int(x) for x in re.findall(r"(?:gets|loses) (\d+)", p.question)]
        assert 1 <= min(operands) and max(operands) <= spec.max_operand
        steps_seen.add(len(p.answer.splitlines()) - 1)
        assert score(p.answer, str(p.value))["correct"] == {"strict": True, "flexible": True}
    assert steps_seen == {3, 4, 5, 6}


def test_splits_are_seeded_and_the_test_set_is_held_out():
    spec = TaskSpec()
    train, test = make_splits(3, 400, 50, spec)
    again_train, again_test = make_splits(3, 400, 50, spec)
    other_train, _ = make_splits(4, 400, 50, spec)
    assert (train, test) == (again_train, again_test)
    assert train != other_train
    assert len(test) == 50 and len({p.question for p in test}) == 50
    assert not {p.question for p in test} & {p.question for p in train}


def test_more_problems_are_seeded_new_and_leave_the_splits_alone():
    spec = TaskSpec()
    train, test = make_splits(5, 300, 40, spec)
    seen = {p.question for p in train + test}
    extra = more_problems(5, 200, seen, spec)
    assert extra == more_problems(5, 200, seen, spec) and len(extra) == 200
    assert not {p.question for p in extra} & seen
    assert make_splits(5, 300, 40, spec) == (train, test)


def test_pretraining_text_holds_stories_and_facts_but_no_worked_answer():
    spec = TaskSpec()
    train, _ = make_splits(0, 200, 10, spec)
    documents = pretraining_documents(train, 0, spec)
    assert len(documents) == 400
    assert sorted(d for d in documents if "?" in d) == sorted(p.question for p in train)
    assert not any("####" in d or "Monday:" in d for d in documents)
    facts = [d for d in documents if "=" in d]
    assert len(facts) == 200
    for sheet in facts:
        for a, sign, b, c in re.findall(r"(\d+) ([+-]) (\d+) = (\d+)\.", sheet):
            assert int(c) == (int(a) + int(b) if sign == "+" else int(a) - int(b))
            assert 0 <= int(c) <= spec.max_value and 1 <= int(b) <= spec.max_operand


def test_demo_config_checks_and_quick_keeps_explicit_settings():
    with pytest.raises(ValueError, match="divide gen_length"):
        DemoConfig(eval_block_lengths="8,12", gen_length=32)
    with pytest.raises(ValueError, match="steps"):
        DemoConfig(min_steps=5, max_steps=3)
    quick = DemoConfig(quick=True, sft_steps=50)
    assert quick.sft_steps == 50 and quick.n_train == 600 and quick.d_model == 32


def test_sft_steps_match_flops_or_supervised_tokens():
    flops = DemoConfig(sft_steps=100)
    assert sft_steps(flops, [4, 4, 4]) == {"blockwise": 100, "fullseq": 100}
    tokens = DemoConfig(sft_steps=100, budget="equal-tokens")
    # One block of B per step supervises 1/B of what the whole answer does, in expectation.
    assert sft_steps(tokens, [4, 4, 4]) == {"blockwise": 400, "fullseq": 100}
    assert sft_steps(tokens, [3, 5, 1, 3]) == {"blockwise": 300, "fullseq": 100}
    with pytest.raises(ValueError):
        DemoConfig(budget="equal-samples")


def _write_rows(path: Path, correct: list[bool]) -> str:
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"p{i}",
                    "index": i,
                    "output": "",
                    "gold": "1",
                    "extracted": {"strict": None},
                    "correct": {"strict": c},
                    "settings_id": "s",
                }
            )
            + "\n"
            for i, c in enumerate(correct)
        )
    )
    return str(path)


def test_paired_tests_and_verdict_name_the_winner_and_its_significance(tmp_path):
    # Blockwise right on 0..29, full-sequence on 0..9 and 30..31: 20 vs 2 discordant problems.
    bw = [i < 30 for i in range(40)]
    fs = [i < 10 or 30 <= i < 32 for i in range(40)]
    cells = [
        {"name": "blockwise", "block_length": 8, "output": _write_rows(tmp_path / "bw.jsonl", bw)},
        {"name": "fullseq", "block_length": 8, "output": _write_rows(tmp_path / "fs.jsonl", fs)},
    ]
    tests = paired_tests(cells)
    assert tests[8]["a_only"] == 20 and tests[8]["b_only"] == 2
    assert tests[8]["accuracy_a"] == 0.75 and tests[8]["accuracy_b"] == 0.3
    assert tests[8]["p"] < 0.001
    text = verdict(tests, 8)
    assert (
        text.startswith("Blockwise SFT beats full-sequence SFT by 45.0 points") and "significant at" in text
    )
    # Swapped: the other method wins; a 1-vs-0 split is reported as not significant.
    cells[0]["output"], cells[1]["output"] = cells[1]["output"], cells[0]["output"]
    assert verdict(paired_tests(cells), 8).startswith("Full-sequence SFT beats Blockwise SFT")
    near = [
        {"name": "blockwise", "block_length": 8, "output": _write_rows(tmp_path / "a.jsonl", [True, False])},
        {"name": "fullseq", "block_length": 8, "output": _write_rows(tmp_path / "b.jsonl", [False, False])},
    ]
    assert "not significant" in verdict(paired_tests(near), 8)
    assert "no verdict" in verdict(paired_tests(near), 16)


def run_quick_demo(out: Path, *flags: str, expect: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "blocksft", "demo", "--quick", "--out", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == expect, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # Laid out as `blocksft bench demo` lays its runs out, so that it can read this one.
    out = tmp_path_factory.mktemp("demo") / "equal-flops" / "seed-1"
    return out, run_quick_demo(out, "--seed", "1")


def test_quick_demo_writes_every_artefact(quick_run):
    out, done = quick_run
    for name in ("report.md", "loss.png", "accuracy_by_block.png", "demo.json"):
        assert (out / name).stat().st_size > 0, name
    for png in ("loss.png", "accuracy_by_block.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["checkpoints"]) == {"base", "blockwise", "fullseq"}
    for path in summary["checkpoints"].values():
        folder = Path(path)
        assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
        assert (folder / "tokenizer.json").exists()
    assert set(summary["stages"]) == {
        "task",
        "pretrain",
        "prepare",
        "sft blockwise",
        "sft fullseq",
        "eval",
        "report",
    }
    # One results file per (model, block length), each row scored, all on the same held-out problems:
    # both SFT models at both block lengths, the base at the training block size only.
    results = sorted((out / "results").glob("demo.*.b*.jsonl"))
    assert sorted(p.name.split("_step")[0] + "." + p.name.rsplit(".", 2)[-2] for p in results) == [
        "demo.base.b8",
        "demo.blockwise.b32",
        "demo.blockwise.b8",
        "demo.fullseq.b32",
        "demo.fullseq.b8",
    ]
    ids = None
    for path in results:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == 24 and all(set(r["correct"]) == {"strict", "flexible"} for r in rows)
        ids = ids or {r["id"] for r in rows}
        assert {r["id"] for r in rows} == ids
    # The budgets: equal optimizer steps for both SFT runs, Blockwise supervises fewer tokens.
    budgets = {
        n: json.loads((out / "checkpoints" / f"{n}_logs" / "budget.json").read_text())
        for n in ("blockwise", "fullseq")
    }
    assert budgets["blockwise"]["steps"] == budgets["fullseq"]["steps"] == 12
    assert budgets["blockwise"]["samples"] == budgets["fullseq"]["samples"] == 12 * 8
    assert budgets["blockwise"]["supervised_tokens"] < budgets["fullseq"]["supervised_tokens"]
    # Held-out problems are not in the SFT data.
    train = {json.loads(line)["query"] for line in (out / "data" / "train.jsonl").read_text().splitlines()}
    test = {json.loads(line)["question"] for line in (out / "data" / "test.jsonl").read_text().splitlines()}
    assert not train & test


def test_quick_demo_records_what_its_numbers_came_from_and_prints_no_foreign_warning(quick_run):
    import torch
    import transformers

    out, done = quick_run
    summary = json.loads((out / "demo.json").read_text())
    env = summary["environment"]
    assert env["torch_threads"] == DemoConfig().threads
    assert env["versions"]["torch"] == torch.__version__
    assert env["versions"]["transformers"] == transformers.__version__
    assert env["cpu"] and env["cpu_capability"] and env["cpu_count"] >= 1
    revision = env["revision"]  # the tests run from a git checkout
    assert re.fullmatch(r"[0-9a-f]{40}", revision["commit"]) and revision["dirty"] in (True, False)
    assert summary["seed"] == 1 and summary["settings"]["quick"] is True
    # The recorded results are the per-cell summaries' counts.
    for path in (out / "results").glob("demo.*.b*.summary.json"):
        cell = json.loads(path.read_text())
        name = cell["model"].rsplit("/", 1)[-1].split("_step")[0]
        recorded = summary["results"]["accuracy"][name][str(cell["settings"]["block_length"])]
        assert recorded["strict"]["correct"] == cell["metrics"]["strict"]["correct"]
        assert recorded["flexible"]["correct"] == cell["metrics"]["flexible"]["correct"]
    report = (out / "report.md").read_text()
    assert f"torch {torch.__version__}" in report and "torch threads auto" in report
    assert env["torch_threads"] == "auto" and set(summary["stage_threads"]) == set(summary["stages"])
    assert all(1 <= n <= (os.cpu_count() or 1) for n in summary["stage_threads"].values())
    # DeepSpeed, imported by accelerate whenever it is installed, warns on a CPU unless told.
    assert not re.search(r"warn|Setting accelerator", done.stdout + done.stderr, re.IGNORECASE)


# What `blocksft demo --quick --seed 1` produced when the README's numbers were last regenerated
# (torch 2.13.0+cpu, 1 thread; identical under ATEN_CPU_CAPABILITY=avx2 and avx512). A change that
# moves these moves the full demo's results too: regenerate the README with `blocksft bench demo`.
# fmt: off
PINNED_QUICK_LOSSES = {
    "base": [6.0688, 6.0318, 5.1794, 5.6493, 4.9656, 5.7149,
             5.7358, 5.4819, 5.5785, 5.4141, 5.6416, 4.7999],
    "blockwise": [4.3279, 5.2011, 4.4142, 4.3136, 5.1767, 4.9079,
                  4.944, 5.5791, 3.9414, 5.3713, 4.116, 4.8137],
    "fullseq": [5.2255, 5.9508, 5.2151, 5.0025, 5.0253, 5.4162,
                5.6046, 5.4729, 5.4573, 5.3574, 4.8181, 4.702],
}
# fmt: on
# (strict, flexible) correct counts of the 24 held-out problems per model and block length.
PINNED_QUICK_COUNTS = {
    "base": {"8": (0, 1)},
    "blockwise": {"8": (0, 2), "32": (0, 2)},
    "fullseq": {"8": (0, 2), "32": (0, 2)},
}
PINNED_QUICK_OUTPUTS_SHA256 = "d92eaa1255be0367584441fe17065baa5d5ef66e5cf052633d2a147dfbe64e14"
REGENERATE = (
    "the demo's results moved: if intended, regenerate the README with `blocksft bench demo` and re-pin"
)


def quick_outputs_digest(out: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((out / "results").glob("demo.*.b*.jsonl")):
        for line in path.read_text().splitlines():
            digest.update(json.loads(line)["output"].encode())
    return digest.hexdigest()


def test_quick_demo_repeats_its_pinned_losses_and_accuracies(quick_run):
    import csv

    import torch

    out, _ = quick_run
    for name, pinned in PINNED_QUICK_LOSSES.items():
        rows = list(csv.DictReader((out / "checkpoints" / f"{name}_logs" / "train_loss.csv").open()))
        # 5e-4 absorbs another x86 CPU's float rounding over 12 steps, not a change of the math.
        assert [float(r["loss"]) for r in rows] == pytest.approx(pinned, abs=5e-4), f"{name}: {REGENERATE}"
    accuracy = json.loads((out / "demo.json").read_text())["results"]["accuracy"]
    counts = {
        name: {b: (cell["strict"]["correct"], cell["flexible"]["correct"]) for b, cell in cells.items()}
        for name, cells in accuracy.items()
    }
    assert counts == PINNED_QUICK_COUNTS, REGENERATE
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):  # the kernels the pin was made on
        assert quick_outputs_digest(out) == PINNED_QUICK_OUTPUTS_SHA256, REGENERATE


@pytest.mark.parametrize("threads", ["1", "2"])
def test_quick_demo_numbers_do_not_depend_on_the_thread_count(threads, tmp_path):
    """--threads auto may pick another count stage by stage; the numbers must not move with it."""
    out = tmp_path / "run"
    run_quick_demo(out, "--seed", "1", "--threads", threads)
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["stage_threads"].values()) == {int(threads)}
    test_quick_demo_repeats_its_pinned_losses_and_accuracies((out, None))


def test_auto_threads_take_the_idle_cores():
    from blocksft.demo.threads import threads_for

    assert threads_for(2, 0.05) == 2  # an idle machine: every core
    assert threads_for(2, 1.0) == 1  # one busy process: the other core
    assert threads_for(2, 1.6) == 1 and threads_for(2, 3.0) == 1  # at least one
    assert threads_for(8, 2.4) == 6 and threads_for(8, 2.6) == 5
    assert DemoConfig(threads="3").fixed_threads == 3 and DemoConfig().fixed_threads is None
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="threads must be auto or a count"):
            DemoConfig(threads=bad)


def test_quick_demo_report_is_complete(quick_run):
    out, done = quick_run
    report = (out / "report.md").read_text()
    for heading in (
        "## Accuracy on held-out problems",
        "## What the numbers mean",
        "## Settings",
        "## Time and files",
    ):
        assert heading in report
    names = r"base \(before SFT\)|Blockwise SFT|full-sequence SFT"
    table = re.findall(rf"^\| ({names}) \|(.*\[.*)\|$", report, re.M)
    assert [name for name, _ in table] == ["base (before SFT)", "Blockwise SFT", "full-sequence SFT"]
    # accuracy [CI] per block length; the base at the training block size only
    for (_, cells), expected in zip(table, (1, 2, 2)):
        assert len(re.findall(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", cells)) == expected
    assert re.search(r"McNemar exact p = [\d.e-]+", report)
    assert "![accuracy by inference block length](accuracy_by_block.png)" in report
    assert "report:" in done.stdout


@pytest.fixture(scope="module")
def dream_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-dream") / "run"
    return out, run_quick_demo(out, "--family", "dream", "--seed", "1")


def test_quick_dream_demo_trains_evaluates_and_reports_dream_models(dream_run):
    import csv

    import torch
    from transformers import AutoModel

    from blocksft.families.dream import IM_END, MASK
    from blocksft.model import DreamModel

    out, done = dream_run
    for name in ("report.md", "loss.png", "accuracy_by_block.png", "demo.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "demo.json").read_text())
    assert summary["family"] == "dream" and summary["settings"]["family"] == "dream"
    report = (out / "report.md").read_text()
    assert "A tiny Dream-style masked diffusion model" in report and "LLaDA architecture" not in report
    # --quick: 2 query heads share 1 key/value head (GQA), as the report says.
    assert "Dream architecture" in report and "2 heads (1 key/value)" in report
    assert "Dream's special tokens and chat template" in report
    # The base and both SFT models are Dream checkpoints that load strictly through the Auto classes.
    assert set(summary["checkpoints"]) == {"base", "blockwise", "fullseq"}
    for path in summary["checkpoints"].values():
        config = json.loads((Path(path) / "config.json").read_text())
        assert config["model_type"] == "Dream"
        assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 1)
        model, info = AutoModel.from_pretrained(path, output_loading_info=True)
        assert type(model) is DreamModel and not any(info.values())
        assert model.model.layers[0].self_attn.q_proj.bias is not None
    # The SFT records are ChatML: the answer ends with <|im_end|>; the prompt is the rendered user
    # turn up to the assistant header. The pretraining records start from EOS (Dream has no BOS).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(summary["checkpoints"]["base"])
    assert (
        tokenizer.convert_tokens_to_ids(MASK)
        == DreamModel.config_class.from_pretrained(summary["checkpoints"]["base"]).mask_token_id
    )
    records = torch.load(out / "data" / "sft.pt")
    for record in records[:20]:
        ids = record["full_ids"].tolist()
        prompt = tokenizer.decode(ids[: record["prompt_len"]])
        assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
        answer = tokenizer.decode(ids[record["prompt_len"] :])
        assert answer.startswith("Monday: ") and answer.rstrip("\n").endswith(IM_END)
    pretraining = torch.load(out / "data" / "pretrain.pt")
    assert {int(r["full_ids"][0]) for r in pretraining} == {tokenizer.eos_token_id}
    # Every model decoded every held-out problem at its block lengths.
    results = sorted((out / "results").glob("demo.*.b*.jsonl"))
    assert len(results) == 5
    for path in results:
        assert len(path.read_text().splitlines()) == 24
    # Training ran: finite losses, lower in the second half of each run than in the first.
    for name in ("base", "blockwise", "fullseq"):
        rows = list(csv.DictReader((out / "checkpoints" / f"{name}_logs" / "train_loss.csv").open()))
        losses = [float(r["loss"]) for r in rows]
        assert len(losses) == 12 and all(math.isfinite(x) for x in losses), name
        assert sum(losses[6:]) < sum(losses[:6]), (name, losses)
    assert not re.search(r"warn|Setting accelerator", done.stdout + done.stderr, re.IGNORECASE)


def test_demo_takes_a_known_family_only():
    from typing import get_args, get_type_hints

    from blocksft.families import FAMILIES

    # The flag's choices are every family's name (the config cannot import the families: torch).
    assert set(get_args(get_type_hints(DemoConfig)["family"])) == {f.name for f in FAMILIES}
    assert DemoConfig(family="dream").family == "dream" and DemoConfig().family == "llada"
    with pytest.raises(ValueError, match="family must be llada or dream"):
        DemoConfig(family="qwen")


def test_demo_refuses_a_non_empty_output_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    done = run_quick_demo(tmp_path, expect=2)
    assert "--overwrite" in done.stderr
    assert (tmp_path / "keep.txt").exists()


def test_demo_results_script_runs_the_demo_and_rewrites_the_readme(quick_run, tmp_path):
    """`blocksft bench demo` reads the finished seed-1 run, runs the equal-tokens one (--quick) and
    writes both into the README's marked part; the equal-tokens budgets match supervised tokens."""
    from blocksft.bench.demo import BEGIN, END

    seed_1, _ = quick_run
    runs = seed_1.parent.parent
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{BEGIN}\nold numbers\n{END}\n\nThe rest.\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "blocksft",
            "bench",
            "demo",
            "--seeds",
            "1",
            "--equal-tokens-seeds",
            "0",
            "--runs",
            str(runs),
            "--reuse",
            "--demo-args=--quick",
            "--readme",
            str(readme),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = runs / "equal-tokens" / "seed-0"
    text = readme.read_text()
    assert text.startswith("# Title\n\n") and text.endswith(f"{END}\n\nThe rest.\n")
    assert "old numbers" not in text
    flops = json.loads((seed_1 / "demo.json").read_text())
    assert flops["results"]["verdict"] in text
    assert json.loads((out / "demo.json").read_text())["results"]["verdict"] in text
    assert "--seeds 1 --equal-tokens-seeds 0 --demo-args='--quick'" in text
    budgets = {
        n: json.loads((out / "checkpoints" / f"{n}_logs" / "budget.json").read_text())
        for n in ("blockwise", "fullseq")
    }
    assert budgets["fullseq"]["steps"] == 12
    assert budgets["blockwise"]["steps"] >= 3 * 12  # every quick answer spans 3+ blocks of 8
    ratio = budgets["blockwise"]["supervised_tokens"] / budgets["fullseq"]["supervised_tokens"]
    assert 0.8 < ratio < 1.25
    report = (out / "report.md").read_text()
    assert "EQUAL-TOKENS" in report and f"{budgets['blockwise']['steps']} optimizer steps" in report
