"""The demo's synthetic task: seeded word problems whose worked answers span several blocks.

A problem is a short story (a start count, then one gain or loss per weekday) and a question; the
worked answer has one line per day, ``Monday: 9 - 2 = 7``, then ``#### 7`` so that the GSM8K scorer
applies unchanged. With whole numbers as single tokens each answer line is exactly 8 tokens, so at
block size 8 one block is one reasoning step, and every step starts from the count the step before
it ended with. The pretraining text is the stories without their answers plus sheets of the same
sums (``9 - 2 = 7.``): the base model learns the language and the arithmetic, but has never seen a
worked answer, the chat format, or an answer ending in ``#### N``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

NAMES = ("Ann", "Ben", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Leo")
ITEMS = ("pens", "cards", "coins", "eggs", "books", "stamps", "shells", "apples")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class TaskSpec:
    """The task's size: steps per problem, the largest count and the largest gain or loss."""

    min_steps: int = 3
    max_steps: int = 3
    max_value: int = 12
    max_operand: int = 3

    def __post_init__(self):
        if not 1 <= self.min_steps <= self.max_steps <= len(DAYS):
            raise ValueError(f"steps must satisfy 1 <= min_steps <= max_steps <= {len(DAYS)}, got {self}")
        if self.max_value < 2 or not 1 <= self.max_operand <= self.max_value:
            raise ValueError(f"need max_value >= 2 and 1 <= max_operand <= max_value, got {self}")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # one worked line per day, then "#### <value>"
    value: int


def change_for(rng: random.Random, value: int, spec: TaskSpec) -> int:
    """A signed change that keeps the count within [0, max_value]; gains and losses equally likely."""
    gain = value == 0 or (value < spec.max_value and rng.random() < 0.5)
    if gain:
        return rng.randint(1, min(spec.max_operand, spec.max_value - value))
    return -rng.randint(1, min(spec.max_operand, value))


def make_problem(rng: random.Random, spec: TaskSpec) -> Problem:
    """One problem drawn from ``rng``.

    >>> p = make_problem(random.Random(0), TaskSpec(min_steps=2, max_steps=2))
    >>> p.answer.splitlines()[-1] == f"#### {p.value}"
    True
    """
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(0, spec.max_value)
    story, lines = [f"{name} has {value} {item}."], []
    for day in DAYS[: rng.randint(spec.min_steps, spec.max_steps)]:
        change = change_for(rng, value, spec)
        verb, sign = ("gets", "+") if change > 0 else ("loses", "-")
        story.append(f"On {day} {name} {verb} {abs(change)}.")
        lines.append(f"{day}: {value} {sign} {abs(change)} = {value + change}")
        value += change
    story.append(f"How many {item} does {name} have now?")
    return Problem(" ".join(story), "\n".join(lines) + f"\n#### {value}", value)


def make_splits(seed: int, n_train: int, n_test: int, spec: TaskSpec) -> tuple[list[Problem], list[Problem]]:
    """Train and held-out test problems; no test question occurs in the training set.

    Raises:
        ValueError: if the task has too few distinct questions for the sizes asked.
    """
    rng = random.Random(seed)
    train = [make_problem(rng, spec) for _ in range(n_train)]
    seen = {p.question for p in train}
    test: list[Problem] = []
    for _ in range(200 * max(n_test, 1)):
        if len(test) == n_test:
            return train, test
        problem = make_problem(rng, spec)
        if problem.question not in seen:
            seen.add(problem.question)
            test.append(problem)
    raise ValueError(
        f"could not draw {n_test} test problems unseen in training; lower n_train or widen the task"
    )


def more_problems(seed: int, n: int, exclude: set[str], spec: TaskSpec) -> list[Problem]:
    """``n`` further training problems from a stream of their own (the splits stay as they are),
    none of whose questions is in ``exclude``."""
    rng = random.Random(seed + 2)
    extra: list[Problem] = []
    for _ in range(200 * max(n, 1)):
        if len(extra) == n:
            return extra
        problem = make_problem(rng, spec)
        if problem.question not in exclude:
            extra.append(problem)
    raise ValueError(f"could not draw {n} more distinct training problems; widen the task")


def fact_sheet(rng: random.Random, spec: TaskSpec, facts: int = 6) -> str:
    """A line of ``a + b = c.`` / ``a - b = c.`` facts within the task's ranges (pretraining text)."""
    out = []
    for _ in range(facts):
        a = rng.randint(0, spec.max_value)
        b = change_for(rng, a, spec)
        out.append(f"{a} {'+' if b > 0 else '-'} {abs(b)} = {a + b}.")
    return " ".join(out)


def pretraining_documents(train: list[Problem], seed: int, spec: TaskSpec) -> list[str]:
    """The training stories (without answers) and as many fact sheets, shuffled (seeded)."""
    rng = random.Random(seed + 1)
    documents = [p.question for p in train] + [fact_sheet(rng, spec) for _ in train]
    rng.shuffle(documents)
    return documents


def tokenizer_corpus(train: list[Problem], documents: list[str], spec: TaskSpec) -> list[str]:
    """Text the demo tokenizer is trained on: every worked answer, the documents, all numbers."""
    numbers = " ".join(str(n) for n in range(spec.max_value + 1))
    roles = "user assistant system"  # the chat template's words, so they are whole tokens too
    return [f"{p.question}\n{p.answer}" for p in train] + documents + [numbers, roles] * 10


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_task(train: list[Problem], test: list[Problem], folder: Path) -> dict[str, Path]:
    """``train.jsonl`` (query/response, what ``prepare`` reads) and ``test.jsonl`` (GSM8K's fields)."""
    return {
        "train": write_jsonl(
            [{"query": p.question, "response": p.answer} for p in train], folder / "train.jsonl"
        ),
        "test": write_jsonl(
            [{"question": p.question, "answer": p.answer} for p in test], folder / "test.jsonl"
        ),
    }
