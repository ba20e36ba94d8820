"""Datasets from the hub or local files, and the evaluation tasks GSM8K and MATH.

:func:`open_dataset` reads a hub dataset or a local ``.jsonl``/``.json``/``.parquet`` file (or a
folder of them) with ``datasets``; bad input becomes one clear error. :func:`load_gsm8k` and
:func:`load_math` return :class:`Problem` rows (question + gold final answer) with stable ids.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import datasets

from blocksft.errors import BlocksftError

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}

GSM8K_SOURCE = "openai/gsm8k"
MATH_SOURCE = "EleutherAI/hendrycks_math"
# Hub datasets that keep MATH's seven subjects as separate configs: loaded and concatenated in this
# order, which gives the full 5,000-problem test set.
MATH_SUBJECT_CONFIGS = {
    "EleutherAI/hendrycks_math": (
        "algebra",
        "counting_and_probability",
        "geometry",
        "intermediate_algebra",
        "number_theory",
        "prealgebra",
        "precalculus",
    ),
}


@dataclass(frozen=True)
class Problem:
    """One evaluation problem.

    Attributes:
        id: stable, row-index based, e.g. ``gsm8k-test-00042``.
        question: the problem text.
        solution: the reference solution text.
        gold: the final answer (GSM8K: after ``####`` without commas; MATH: the last ``\\boxed{}``).
    """

    id: str
    question: str
    solution: str
    gold: str


def _is_local(source: str) -> bool:
    return Path(source).suffix.lower() in LOCAL_FORMATS or Path(source).exists()


@contextmanager
def quiet_datasets():
    """No progress bar and no log lines from ``datasets`` while a local file loads: it takes moments,
    and a parse failure must surface as our one-line error, not a logged traceback before it."""
    was_enabled, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if was_enabled:
            datasets.enable_progress_bars()


def open_dataset(source: str, split: str = "train", config: str | None = None, *, flag: str = "--dataset"):
    """Load a ``datasets.Dataset`` from a hub id or a local file/folder.

    Args:
        source: hub id (``meta-math/MetaMathQA``) or a ``.jsonl``/``.json``/``.parquet`` file or folder.
        split: the split of a hub dataset or folder (a single local file is one split).
        config: the hub dataset's configuration name, if it has several.
        flag: names the option in error messages.

    Raises:
        BlocksftError: missing, empty or unreadable file; unknown hub id or no network; no rows.
    """
    path = Path(source)
    try:
        if _is_local(source):
            if not path.exists():
                raise BlocksftError(f"{flag} {source}: no such file")
            if path.is_dir():
                dataset = datasets.load_dataset(str(path), config, split=split)
            else:
                if path.stat().st_size == 0:
                    raise BlocksftError(f"{flag} {source} is an empty file")
                builder = LOCAL_FORMATS.get(path.suffix.lower())
                if builder is None:
                    raise BlocksftError(f"{flag} {source}: unknown file type; use .jsonl, .json or .parquet")
                if builder == "json":
                    check_utf8(path, f"{flag} {source}")
                with quiet_datasets():
                    dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            dataset = datasets.load_dataset(source, config, split=split)
    except BlocksftError:
        raise
    except Exception as err:  # datasets raises many kinds: I/O, parsing, hub and network errors
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        where = f"{flag} {source}" + ("" if _is_local(source) else f" (split {split!r})")
        raise BlocksftError(
            f"cannot read {where}: {type(err).__name__}: {message}; give a readable local .jsonl/.json/"
            ".parquet file, or a hub dataset id with network access"
        ) from err
    if len(dataset) == 0:
        raise BlocksftError(f"{flag} {source} has no rows")
    return dataset


def check_utf8(path: str | Path, what: str) -> None:
    """Refuse a text file that is not UTF-8, naming the first bad byte (readers decode lazily, later)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise BlocksftError(
                    f"{what} is not UTF-8 text (byte {offset + err.start}: {err.reason}); "
                    "re-encode it as UTF-8"
                ) from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise BlocksftError(f"{what} is not UTF-8 text (it ends inside a character); re-encode it") from None


def require_columns(dataset, columns: Sequence[str], source: str, *, flag_hint: str = "") -> None:
    """Raise one clear error if ``dataset`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise BlocksftError(
            f"{source} has no field {', '.join(repr(c) for c in missing)} (its fields: "
            f"{', '.join(dataset.column_names)}){flag_hint}"
        )


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced.

    Also reads the brace-less form ``\\boxed 5`` (up to the next ``$`` or whitespace).

    Returns:
        The content, or ``None`` when there is no complete box.
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox")) :]
    if rest.startswith(" "):
        content = re.split(r"[\s$]", rest.lstrip(" "), maxsplit=1)[0]
        return content or None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i]
    return None


def gsm8k_gold(answer: str) -> str | None:
    """GSM8K's final answer: the number after ``####``, commas removed; a one-line answer that is a
    number is itself.

    Returns:
        ``None`` when that is not a number (no ``####`` line in a longer answer, or ``#### eighteen``):
        a text gold would make every prediction wrong.
    """
    if "####" in answer:
        gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
    else:
        gold = answer.strip().replace(",", "")
    try:
        Fraction(gold.removeprefix("$"))
    except (ValueError, ZeroDivisionError):
        return None
    return gold


def _text(row: dict, field: str, index: int, source: str) -> str:
    value = row[field]
    if not isinstance(value, str) or not value.strip():
        raise BlocksftError(f"row {index} of {source}: field {field!r} is empty or not text")
    return value


def _limit(dataset, limit: int | None):
    if limit is not None and limit < len(dataset):
        if limit < 0:
            raise BlocksftError(f"limit must be >= 0, not {limit}")
        return dataset.select(range(limit))
    return dataset


def _split_tag(source: str, split: str) -> str:
    # A local file is named after its split (test.jsonl); hub rows after the split they came from.
    return Path(source).stem if _is_local(source) and Path(source).is_file() else split


def load_gsm8k(source: str = GSM8K_SOURCE, split: str = "test", limit: int | None = None) -> list[Problem]:
    """GSM8K problems from the hub (config ``main``) or a local file with ``question``/``answer``.

    Args:
        source: ``openai/gsm8k`` (or another hub id with the same fields) or a local
            ``.jsonl``/``.json``/``.parquet`` path.
        split: hub split (``test`` or ``train``).
        limit: keep the first ``limit`` problems.

    Returns:
        Problems with ids ``gsm8k-<split or file stem>-<row:05d>``.
    """
    dataset = open_dataset(source, split, None if _is_local(source) else "main", flag="GSM8K source")
    require_columns(dataset, ["question", "answer"], source)
    tag = _split_tag(source, split)
    problems = []
    for i, row in enumerate(_limit(dataset, limit)):
        question, answer = _text(row, "question", i, source), _text(row, "answer", i, source)
        gold = gsm8k_gold(answer)
        if gold is None:
            last = answer.strip().rsplit("\n", 1)[-1]
            raise BlocksftError(
                f"row {i} of {source}: field 'answer' has no '#### <number>' line with the final answer "
                f"(it ends {last[-60:]!r}); GSM8K answers end with one"
            )
        problems.append(Problem(f"gsm8k-{tag}-{i:05d}", question, answer, gold))
    return problems


def _open_math(source: str, split: str, config: str | None):
    subjects = MATH_SUBJECT_CONFIGS.get(source) if config is None and not _is_local(source) else None
    if not subjects:
        return open_dataset(source, split, config, flag="MATH source")
    return datasets.concatenate_datasets(
        [open_dataset(source, split, subject, flag="MATH source") for subject in subjects]
    )


def load_math(
    source: str = MATH_SOURCE, split: str = "test", limit: int | None = None, *, config: str | None = None
) -> list[Problem]:
    """MATH problems from the hub or a local file with ``problem``/``solution``.

    The gold answer is the row's ``answer`` field where there is one (MATH-500), else the last
    ``\\boxed{}`` of the solution.

    Args:
        source: ``EleutherAI/hendrycks_math`` (its seven subject configs, concatenated),
            ``HuggingFaceH4/MATH-500``, another hub id, or a local ``.jsonl``/``.json``/``.parquet``.
        split: hub split.
        limit: keep the first ``limit`` problems.
        config: one hub configuration only (e.g. ``algebra``).

    Returns:
        Problems with ids ``math-<split or file stem>-<row:05d>``.
    """
    dataset = _open_math(source, split, config)
    require_columns(dataset, ["problem", "solution"], source)
    has_answer = "answer" in dataset.column_names
    tag = _split_tag(source, split)
    problems = []
    for i, row in enumerate(_limit(dataset, limit)):
        question, solution = _text(row, "problem", i, source), _text(row, "solution", i, source)
        answer = row["answer"] if has_answer else None
        gold = answer.strip() if isinstance(answer, str) and answer.strip() else last_boxed(solution)
        if gold is None:
            raise BlocksftError(f"row {i} of {source}: field 'solution' has no \\boxed{{...}} answer")
        problems.append(Problem(f"math-{tag}-{i:05d}", question, solution, gold))
    return problems
