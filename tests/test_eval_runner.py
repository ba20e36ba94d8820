"""`blocksft eval` end to end on the tiny random model: rows, summary, resume, errors, grid, shards."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import blocksft.evaluate.runner as runner
from blocksft.cli import main
from blocksft.config.eval import EvalConfig
from blocksft.config.sampler import SamplerConfig
from blocksft.data.tasks import load_gsm8k
from blocksft.errors import BlocksftError
from blocksft.evaluate import results
from blocksft.evaluate.runner import (
    DistContext,
    build_prompt_ids,
    evaluate_problems,
    load_problems,
    prompt_template,
    run_eval,
)
from blocksft.model.loading import load_model
from blocksft.tokenizer import ASSISTANT_HEADER, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# The shared GSM8K test file sits in a "shared" folder beside the checkout (or is named by the env).
_CANDIDATES = [Path(os.environ["BLOCKSFT_GSM8K_TEST"])] if "BLOCKSFT_GSM8K_TEST" in os.environ else []
_CANDIDATES += [p / "shared/data/gsm8k/test.jsonl" for p in ROOT.parents]
SHARED_GSM8K_TEST = next((p for p in _CANDIDATES if p.is_file()), None)

# Where the shared file is absent (a fresh CI machine), eight GSM8K-style rows written here stand in
# for it, so that every runner test runs everywhere; with the file present they use real rows.
_STAND_IN_ROWS = [
    ("A farmer has 12 cows and buys 7 more. How many cows does he have?", "12 + 7 = 19\n#### 19"),
    ("Mia reads 15 pages a day for 4 days. How many pages does she read?", "15 * 4 = 60\n#### 60"),
    ("A box holds 48 pens. 1,250 pens are packed. How many full boxes?", "1250 / 48 = 26\n#### 26"),
    ("Tom had $30 and spent $12.50. How much is left?", "30 - 12.5 = 17.5\n#### 17.5"),
    ("A train goes 60 miles an hour for 3 hours. How far does it go?", "60 * 3 = 180\n#### 180"),
    ("Sara has 5 bags of 9 apples and eats 6. How many are left?", "5 * 9 - 6 = 39\n#### 39"),
    ("A class of 28 splits into teams of 4. How many teams?", "28 / 4 = 7\n#### 7"),
    ("The temperature is 3 degrees and drops by 8. What is it now?", "3 - 8 = -5\n#### -5"),
]


def _stand_in_file() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="blocksft-gsm8k-"))
    lines = [json.dumps({"question": q, "answer": a}) for q, a in _STAND_IN_ROWS]
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "test.jsonl"


GSM8K_TEST = SHARED_GSM8K_TEST or _stand_in_file()

SAMPLER = SamplerConfig(gen_length=16, block_length=8, steps=8)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def evaluate(checkpoint, output, **overrides):
    values = dict(
        model=[checkpoint], data=str(GSM8K_TEST), limit=8, batch_size=4, output=str(output), device="cpu"
    )
    sampler = overrides.pop("sampler", SAMPLER)
    values["block_length"] = str(sampler.block_length)
    values.update(overrides)
    return run_eval(EvalConfig(**values), sampler, progress=False)


def strip_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.fixture(scope="module")
def full_run(checkpoint, tmp_path_factory):
    """An uninterrupted run over 8 GSM8K problems."""
    output = tmp_path_factory.mktemp("full") / "res.jsonl"
    cells = evaluate(checkpoint, output)
    return output, cells


def test_rows_and_summary(full_run, checkpoint):
    output, cells = full_run
    rows = results.read_rows(output)
    assert [r["index"] for r in rows] == list(range(8))
    assert len({r["id"] for r in rows}) == 8
    first = json.loads(GSM8K_TEST.read_text().splitlines()[0])
    assert rows[0]["question"] == first["question"]
    assert rows[0]["gold"] == first["answer"].split("####")[-1].strip().replace(",", "")
    for row in rows:
        assert set(row["extracted"]) == set(row["correct"]) == {"strict", "flexible"}
        assert all(isinstance(v, bool) for v in row["correct"].values())
        assert row["prompt"].count("<|startoftext|>") == 1  # one BOS, from the chat template
        assert "### Instruction:" in row["prompt"] and row["prompt"].endswith("<|end_header_id|>\n\n")
        assert row["nfe"] == 8 and row["seconds"] >= 0
    assert not results.part_paths(output)

    summary = json.loads(results.summary_path(output).read_text())
    assert summary["problems"] == 8 and summary["model"] == checkpoint
    for metric in ("strict", "flexible"):
        m = summary["metrics"][metric]
        assert m["total"] == 8 and m["correct"] == sum(r["correct"][metric] for r in rows)
        assert m["ci95"][0] <= m["accuracy"] <= m["ci95"][1]
    assert summary["settings"]["gen_length"] == 16 and summary["settings"]["block_length"] == 8
    assert summary["settings"]["steps"] == 8 and summary["settings"]["remasking"] == "low_confidence"
    assert summary["settings"]["confidence"] == "float64"
    assert summary["settings"]["prompt_style"] == "alpaca" and summary["seed"] == 42
    assert {"torch", "transformers", "blocksft", "math-verify"} <= set(summary["versions"])
    assert summary["device"] == "cpu" and summary["nfe_total"] == 8 * 8
    assert cells[0]["metrics"] == summary["metrics"]


def test_existing_output_is_extended_never_overwritten(full_run, checkpoint, tmp_path):
    # A finished run over the first 4 problems (its file and summary), then a run over 8.
    output = tmp_path / "res.jsonl"
    first_four = "".join(full_run[0].read_text().splitlines(keepends=True)[:4])
    output.write_text(first_four)
    shutil.copy(results.summary_path(full_run[0]), results.summary_path(output))
    evaluate(checkpoint, output)  # resumes: generates only problems 4..7
    assert output.read_text().startswith(first_four)  # the existing rows are kept byte for byte
    assert strip_seconds(results.read_rows(output)) == strip_seconds(results.read_rows(full_run[0]))


def test_interrupted_run_resumes_from_its_part_file(full_run, checkpoint, tmp_path, monkeypatch):
    output = tmp_path / "res.jsonl"
    real = runner.generate_rows
    calls = []

    def crash_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "generate_rows", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(checkpoint, output)
    assert not output.exists()
    assert len(results.read_rows(results.part_path(output, 0))) == 4
    monkeypatch.setattr(runner, "generate_rows", real)
    evaluate(checkpoint, output)
    assert strip_seconds(results.read_rows(output)) == strip_seconds(results.read_rows(full_run[0]))
    assert not results.part_paths(output)


def test_other_settings_are_refused_and_nothing_is_lost(full_run, checkpoint, tmp_path):
    output = tmp_path / "res.jsonl"
    shutil.copy(full_run[0], output)
    shutil.copy(results.summary_path(full_run[0]), results.summary_path(output))
    before = output.read_text()
    with pytest.raises(BlocksftError, match=r"other settings.*steps: 8 -> 16"):
        evaluate(checkpoint, output, sampler=SamplerConfig(gen_length=16, block_length=8, steps=16))
    with pytest.raises(BlocksftError, match="other settings"):
        evaluate(checkpoint, output, prompt_style="chat")
    assert output.read_text() == before


def test_static_decoding_writes_the_loops_rows_and_resumes_its_files(full_run, checkpoint, tmp_path):
    # decode only changes how fast rows are made: same rows, same fingerprint (a loop file resumes).
    static = dataclasses.replace(SAMPLER, decode="static")
    output = tmp_path / "res.jsonl"
    evaluate(checkpoint, output, sampler=static)
    assert strip_seconds(results.read_rows(output)) == strip_seconds(results.read_rows(full_run[0]))
    assert json.loads(results.summary_path(output).read_text())["decode"] == "static"
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_text("".join(full_run[0].read_text().splitlines(keepends=True)[:4]))
    evaluate(checkpoint, resumed, sampler=static)
    assert strip_seconds(results.read_rows(resumed)) == strip_seconds(results.read_rows(full_run[0]))


def test_a_data_file_rewritten_in_place_is_refused_on_resume(checkpoint, tmp_path):
    data = tmp_path / "gsm.jsonl"
    rows = [{"question": q, "answer": a} for q, a in _STAND_IN_ROWS[:4]]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "res.jsonl"
    evaluate(checkpoint, output, data=str(data), limit=2)
    before = output.read_text()
    moved = tmp_path / "moved" / "gsm.jsonl"  # the same content elsewhere is the same data
    moved.parent.mkdir()
    shutil.copy(data, moved)
    evaluate(checkpoint, output, data=str(moved), limit=4)
    assert output.read_text().startswith(before) and len(results.read_rows(output)) == 4
    rows[1]["question"] = rows[1]["question"].replace("15 pages", "16 pages")  # same path, other data
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    extended = output.read_text()
    with pytest.raises(
        BlocksftError, match=r"other settings .*data_sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"
    ):
        evaluate(checkpoint, output, data=str(data), limit=4)
    assert output.read_text() == extended


def test_progress_in_a_log_is_whole_lines(checkpoint, tmp_path, capsys):
    sampler = SamplerConfig(gen_length=8, block_length=8, steps=8)
    values = dict(model=[checkpoint], data=str(GSM8K_TEST), limit=4, batch_size=1, device="cpu")
    run_eval(EvalConfig(**values, output=str(tmp_path / "r.jsonl"), block_length="8"), sampler)
    err = capsys.readouterr().err  # stderr is not a terminal here, as in a cluster job's log
    lines = [line for line in err.split("\n") if line.startswith("gsm8k ")]
    assert lines[-1].startswith(f"gsm8k {Path(checkpoint).name} B=8: 4/4 problem (100%), ")
    assert len(lines) <= 4 and not any("\r" in line for line in lines)


def test_prompt_styles(tokenizer, tmp_path):
    def text(style, question="How many?"):
        return tokenizer.decode(build_prompt_ids(tokenizer, question, prompt_template(style)))

    user = "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n"
    alpaca = text("alpaca")
    assert alpaca.startswith(user + "Below is an instruction") and alpaca.endswith(ASSISTANT_HEADER)
    assert "### Instruction:\nHow many?\n\n### Response: Let's think step by step.<|eot_id|>" in alpaca
    assert text("chat") == user + "How many?<|eot_id|>" + ASSISTANT_HEADER
    assert text("plain") == "<|startoftext|>How many?"
    assert text("Q: {query}\nA:") == user + "Q: How many?\nA:<|eot_id|>" + ASSISTANT_HEADER
    template_file = tmp_path / "wrapper.txt"
    template_file.write_text("Question: {query}\n")
    assert text(str(template_file)) == user + "Question: How many?<|eot_id|>" + ASSISTANT_HEADER
    with pytest.raises(BlocksftError, match="two BOS"):
        text("plain", "<|startoftext|>How many?")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no gsm8k problems|empty|no rows"),
        ('{"question": "How many?"}\n', "answer"),
        ('{"answer": "#### 3"}\n', "question"),
    ],
)
def test_bad_data_file_gives_one_clear_error(checkpoint, tmp_path, content, message, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    code = main(
        [
            "eval",
            "--model",
            checkpoint,
            "--data",
            str(data),
            "--output",
            str(tmp_path / "o.jsonl"),
            "--gen-length",
            "8",
            "--block-length",
            "8",
            "--steps",
            "8",
            "--device",
            "cpu",
        ]
    )
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # (datasets may draw progress bars first)
    assert code == 2
    assert last_line.startswith("blocksft eval: error:")
    assert "bad.jsonl" in last_line
    assert re.search(message, last_line, flags=re.IGNORECASE)


def test_math_task_on_a_local_file(checkpoint, tmp_path):
    data = tmp_path / "math.jsonl"
    rows = [
        {
            "problem": "What is $1+1$?",
            "solution": "It is $\\boxed{2}$.",
            "level": "Level 1",
            "type": "Algebra",
        },
        {
            "problem": "Half of 1?",
            "solution": "$\\boxed{\\frac{1}{2}}$",
            "level": "Level 1",
            "type": "Algebra",
        },
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "math.jsonl.out.jsonl"
    evaluate(checkpoint, output, task="math", data=str(data), limit=None)
    got = results.read_rows(output)
    assert [r["gold"] for r in got] == ["2", "\\frac{1}{2}"]
    assert all(set(r["correct"]) == {"math_verify", "exact"} for r in got)


def test_grid_writes_table_and_heatmap(checkpoint, tmp_path):
    cells = evaluate(
        checkpoint,
        tmp_path / "grid.jsonl",
        limit=2,
        block_length="4,8",
        sampler=SamplerConfig(gen_length=8, block_length=4, steps=4),
    )
    assert [(c["block_length"], Path(c["output"]).name) for c in cells] == [
        (4, "grid.tiny-llada.b4.jsonl"),
        (8, "grid.tiny-llada.b8.jsonl"),
    ]
    for name in ("grid.grid.md", "grid.grid.csv", "grid.grid.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| tiny-llada |" in (tmp_path / "grid.grid.md").read_text()


def test_grid_refuses_block_lengths_the_sampler_cannot_take(checkpoint, tmp_path):
    with pytest.raises(BlocksftError):
        evaluate(checkpoint, tmp_path / "g.jsonl", block_length="8,5", data="unused.jsonl")


def test_compare_command(full_run, tmp_path, capsys):
    assert main(["eval", "--compare", str(full_run[0]), str(full_run[0])]) == 0
    out = capsys.readouterr().out
    assert "shared problems: 8" in out and "McNemar" in out
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({**results.read_rows(full_run[0])[0], "id": "elsewhere"}) + "\n")
    assert main(["eval", "--compare", str(full_run[0]), str(other)]) == 2
    assert "share no problem id" in capsys.readouterr().err


def test_ranks_take_every_other_problem_and_rank0_merges(full_run, checkpoint, tmp_path):
    output = tmp_path / "res.jsonl"
    config = EvalConfig(model=[checkpoint], data=str(GSM8K_TEST), limit=8, batch_size=4, output=str(output))
    model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
    problems = load_gsm8k(str(GSM8K_TEST), limit=8)
    kwargs = dict(config=config, sampler=SAMPLER, model_name=checkpoint, output=output, progress=False)
    kwargs["data_sha256"] = load_problems(config)[1]  # the whole file's, as `blocksft eval` records it
    # Rank 1 finishes first: it writes its part file and leaves the merge to rank 0.
    assert (
        evaluate_problems(model, tokenizer, problems, dist=DistContext(rank=1, world_size=2), **kwargs)
        is None
    )
    assert [r["index"] for r in results.read_rows(results.part_path(output, 1))] == [1, 3, 5, 7]
    assert not output.exists()
    summary = evaluate_problems(model, tokenizer, problems, dist=DistContext(rank=0, world_size=2), **kwargs)
    assert summary["world_size"] == 2 and summary["metrics"]["strict"]["total"] == 8
    assert strip_seconds(results.read_rows(output)) == strip_seconds(results.read_rows(full_run[0]))
    assert not results.part_paths(output)


@pytest.mark.slow
def test_torchrun_two_processes(full_run, checkpoint, tmp_path):
    output = tmp_path / "res.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = (
        "-m torch.distributed.run --nproc_per_node 2 --master_port 29517 -m blocksft eval --limit 4 "
        "--batch-size 4 --gen-length 16 --block-length 8 --steps 8 --device cpu"
    ).split()
    args += ["--model", checkpoint, "--data", str(GSM8K_TEST), "--output", str(output)]
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = results.read_rows(output)
    assert strip_seconds(rows) == strip_seconds(results.read_rows(full_run[0])[:4])
    assert not results.part_paths(output)
    assert json.loads(results.summary_path(output).read_text())["world_size"] == 2
