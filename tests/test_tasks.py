"""Evaluation tasks: GSM8K and MATH loaders, gold answers, and the boxed-answer reader."""

import json
from pathlib import Path

import datasets
import pytest

from blocksft.data.tasks import Problem, gsm8k_gold, last_boxed, load_gsm8k, load_math, open_dataset
from blocksft.errors import BlocksftError


def shared_gsm8k(name):
    for folder in Path(__file__).resolve().parents:
        candidate = folder / "shared" / "data" / "gsm8k" / name
        if candidate.is_file():
            return candidate
    pytest.skip("shared/data/gsm8k is not available here")


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf_cache")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{5}.", "5"),
        ("first \\boxed{1}, then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("$\\boxed{x^{2}+\\{a\\}}$", "x^{2}+\\{a\\}"),
        ("\\fbox{7} at the end", "7"),
        ("\\boxed{3} but finally \\fbox{4}", "4"),
        ("\\fbox{3} but finally \\boxed{4}", "4"),
        ("the answer is $\\boxed 12$.", "12"),
        ("no box here", None),
        ("unbalanced \\boxed{1 + {2}", None),
        ("\\boxed{}", ""),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_gsm8k_gold():
    assert gsm8k_gold("She pays 2 x 600 = 1,200.\n#### 1,200") == "1200"
    assert gsm8k_gold("work\n#### -3.5 ") == "-3.5"
    assert gsm8k_gold(" 42 ") == "42"
    assert gsm8k_gold("a long solution\nwith no final line") is None


def test_gsm8k_from_a_local_file(tmp_path):
    rows = [
        {"question": "How many?", "answer": "2 + 2 = 4\n#### 4"},
        {"question": "How much?", "answer": "It costs 1,000 + 234.\n#### 1,234"},
        {"question": "Third?", "answer": "#### 3"},
    ]
    path = write_jsonl(tmp_path / "test.jsonl", rows)
    problems = load_gsm8k(str(path))
    assert problems[1] == Problem("gsm8k-test-00001", "How much?", rows[1]["answer"], "1234")
    assert [p.gold for p in problems] == ["4", "1234", "3"]
    assert [p.id for p in load_gsm8k(str(path), limit=2)] == ["gsm8k-test-00000", "gsm8k-test-00001"]


def test_gsm8k_real_test_set():
    problems = load_gsm8k(str(shared_gsm8k("test.jsonl")))
    assert len(problems) == 1319
    assert len({p.id for p in problems}) == 1319 and problems[42].id == "gsm8k-test-00042"
    assert problems[0].question.startswith("Janet") and problems[0].gold == "18"
    assert all(p.gold and "," not in p.gold for p in problems)


def test_math_from_local_files(tmp_path):
    rows = [
        {"problem": "Add.", "solution": "We get $\\boxed{\\frac{3}{4}}$.", "level": "Level 1"},
        {"problem": "Twice.", "solution": "First \\boxed{1}, then $\\boxed{2}$."},
    ]
    problems = load_math(str(write_jsonl(tmp_path / "math.jsonl", rows)))
    assert problems[0] == Problem("math-math-00000", "Add.", rows[0]["solution"], "\\frac{3}{4}")
    assert problems[1].gold == "2"
    # MATH-500 style: an explicit answer field wins.

    with_answer = [dict(rows[0], answer="0.75")]
    datasets.Dataset.from_list(with_answer).to_parquet(str(tmp_path / "test.parquet"))
    (problem,) = load_math(str(tmp_path / "test.parquet"))
    assert problem.gold == "0.75" and problem.id == "math-test-00000"


BAD_FILES = {
    "missing field": ("gsm8k", [{"question": "q"}], "has no field 'answer'"),
    "no final answer": ("gsm8k", [{"question": "q", "answer": "a\nb"}], "row 0 .*no '#### "),
    "empty question": ("gsm8k", [{"question": " ", "answer": "#### 1"}], "row 0 .*'question' is empty"),
    "math without box": ("math", [{"problem": "p", "solution": "no box"}], "row 0 .*no \\\\boxed"),
    "math missing field": ("math", [{"problem": "p"}], "has no field 'solution'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_one_clear_error(case, tmp_path):
    task, rows, match = BAD_FILES[case]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    loader = load_gsm8k if task == "gsm8k" else load_math
    with pytest.raises(BlocksftError, match=match) as info:
        loader(str(path))
    assert str(path) in str(info.value)


def test_missing_empty_and_unknown_files(tmp_path):
    with pytest.raises(BlocksftError, match="no such file"):
        load_gsm8k(str(tmp_path / "absent.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(BlocksftError, match="empty file"):
        load_gsm8k(str(tmp_path / "empty.jsonl"))
    (tmp_path / "rows.csv").write_text("question,answer\n")
    with pytest.raises(BlocksftError, match="unknown file type"):
        open_dataset(str(tmp_path / "rows.csv"))
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(BlocksftError, match="(has no rows|cannot read)"):
        open_dataset(str(tmp_path / "list.json"))
