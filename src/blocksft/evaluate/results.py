"""Result files of ``blocksft eval``: one JSONL row per problem, resume, shards, summary, compare.

A row::

    {"id": "gsm8k-test-0", "index": 0, "question": ..., "prompt": ..., "output": ..., "gold": "18",
     "extracted": {"strict": "18", "flexible": "18"}, "correct": {"strict": true, "flexible": true},
     "nfe": 256, "seconds": 1.9, "settings_id": "3f2a..."}

``settings_id`` fingerprints everything that changes what a row contains (model, data, prompt,
decoding settings), so a resumed run refuses a file written with other settings instead of
mixing them. While a run is going, rank ``r`` appends finished rows to ``<output>.part<r>``; when
every rank is done, rank 0 merges the existing output and all parts, in dataset order, into
``<output>`` (written to a temporary name, then renamed) and writes ``<output stem>.summary.json``.
Existing rows are kept byte for byte: an output is extended, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from blocksft.errors import BlocksftError
from blocksft.evaluate.stats import paired_comparison, wilson_interval

REQUIRED_ROW_KEYS = ("id", "index", "output", "gold", "extracted", "correct", "settings_id")


# Settings that result files written before they existed did not record, with the value those
# files were made with: at that value a setting leaves the fingerprint as it was, so they resume.
SETTINGS_ADDED_LATER = {"confidence": "float64"}


def settings_id(settings: dict) -> str:
    """A short fingerprint of a run's settings (canonical JSON, SHA-256, 16 hex digits)."""
    kept = {k: v for k, v in settings.items() if SETTINGS_ADDED_LATER.get(k, object()) != v}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def summary_path(output: str | Path) -> Path:
    """``results.jsonl`` -> ``results.summary.json``."""
    output = Path(output)
    return (
        output.with_suffix(".summary.json") if output.suffix == ".jsonl" else Path(f"{output}.summary.json")
    )


def part_path(output: str | Path, rank: int) -> Path:
    """The file rank ``rank`` appends its rows to while the run goes on."""
    return Path(f"{output}.part{rank}")


def part_paths(output: str | Path) -> list[Path]:
    """Every part file of ``output`` (from any rank of any earlier run), sorted."""
    output = Path(output)
    if not output.parent.is_dir():
        return []
    prefix = output.name + ".part"
    return sorted(
        p for p in output.parent.iterdir() if p.name.startswith(prefix) and p.name[len(prefix) :].isdigit()
    )


def _parse_lines(path: Path) -> tuple[list[tuple[str, dict]], bool]:
    """(raw line, row) pairs of a JSONL file, and whether its last line was torn (cut mid-write)."""
    if path.is_dir():
        raise BlocksftError(f"{path} is a folder, not a results file; give a .jsonl file name")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BlocksftError(
            f"{path} is not UTF-8 text (byte {err.start}), so not a blocksft results file; choose another "
            "--output"
        ) from err
    lines = text.split("\n")
    torn = False
    if lines and lines[-1] == "":
        lines.pop()
    elif lines and not text.endswith("\n"):
        # A last line without its newline was being written when the run stopped: drop it if
        # it does not parse.
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
            torn = True
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BlocksftError(
                f"{path} line {number} is not valid JSON ({err.msg}); fix or remove that line, "
                "or use another --output"
            ) from err
        missing = [k for k in REQUIRED_ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise BlocksftError(
                f"{path} line {number} is not a blocksft eval row (missing {', '.join(missing)}); "
                "choose another --output"
            )
        pairs.append((line, row))
    return pairs, torn


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a results file (a torn last line is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise BlocksftError(f"results file {path} does not exist")
    return [row for _, row in _parse_lines(path)[0]]


def repair_part(path: str | Path) -> None:
    """Cut a torn last line off a part file so that appending to it stays valid JSONL."""
    path = Path(path)
    if not path.is_file():
        return
    pairs, torn = _parse_lines(path)
    if torn:
        warnings.warn(f"{path}: dropped a last line cut short by an interruption", stacklevel=2)
        _write_atomic(path, "".join(line + "\n" for line, _ in pairs))


def load_done(output: str | Path, expected_settings_id: str, settings: dict | None = None) -> dict[str, dict]:
    """Rows already written for ``output`` (its merged file and any part files), keyed by id.

    Raises:
        BlocksftError: when a row was written with other settings (naming them when the old
            summary says what they were).
    """
    output = Path(output)
    done: dict[str, dict] = {}
    for path in [output, *part_paths(output)]:
        if not path.is_file():
            continue
        for _, row in _parse_lines(path)[0]:
            if row["settings_id"] != expected_settings_id:
                raise BlocksftError(_settings_mismatch_message(path, output, row["settings_id"], settings))
            done.setdefault(str(row["id"]), row)
    return done


def _settings_mismatch_message(path: Path, output: Path, found_id: str, settings: dict | None) -> str:
    detail = ""
    summary = summary_path(output)
    if settings is not None and summary.is_file():
        try:
            old = SETTINGS_ADDED_LATER | json.loads(summary.read_text()).get("settings", {})
        except (json.JSONDecodeError, AttributeError, TypeError):
            old = {}
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            detail = " (" + ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed) + ")"
    return (
        f"{path} holds rows decoded with other settings (settings id {found_id}, this run "
        f"{settings_id(settings) if settings is not None else '?'}){detail}; rerun with the same "
        "settings to resume it, or pass another --output"
    )


def append_rows(path: str | Path, rows: Iterable[dict]) -> None:
    """Append rows to a part file, one whole line per write, flushed (a crash loses at most one)."""
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def merge_parts(output: str | Path) -> list[dict]:
    """Fold every part file into ``output`` in dataset order (by ``index``) and delete the parts.

    Rows already in ``output`` keep their exact text; a row id seen twice keeps its first copy.

    Returns:
        All rows of the merged file.
    """
    output = Path(output)
    parts = part_paths(output)
    entries: dict[str, tuple[int, str, dict]] = {}
    for path in [output, *parts]:
        if path.is_file():
            for line, row in _parse_lines(path)[0]:
                entries.setdefault(str(row["id"]), (int(row["index"]), line, row))
    ordered = sorted(entries.values(), key=lambda e: e[0])
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(output, "".join(line + "\n" for _, line, _ in ordered))
    for path in parts:
        path.unlink()
    return [row for _, _, row in ordered]


def metric_summary(rows: list[dict]) -> dict[str, dict]:
    """Accuracy and its 95 % Wilson interval for every metric in the rows' ``correct``."""
    metrics = list(rows[0]["correct"]) if rows else []
    out = {}
    for metric in metrics:
        correct = sum(1 for r in rows if r["correct"].get(metric))
        low, high = wilson_interval(correct, len(rows))
        out[metric] = {
            "correct": correct,
            "total": len(rows),
            "accuracy": correct / len(rows),
            "ci95": [low, high],
        }
    return out


def write_summary(output: str | Path, summary: dict) -> Path:
    """Write the summary JSON next to ``output`` (atomically); returns its path."""
    path = summary_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return path


def format_accuracy(metrics: dict[str, dict]) -> str:
    """``strict 76.0% [73.6, 78.3] | flexible ...`` (n in the first entry)."""
    return " | ".join(
        f"{name} {100 * m['accuracy']:.1f}% [{100 * m['ci95'][0]:.1f}, {100 * m['ci95'][1]:.1f}]"
        f" (n={m['total']})"
        for name, m in metrics.items()
    )


def compare_files(path_a: str | Path, path_b: str | Path) -> dict:
    """Paired comparison of two results files on the problems both contain.

    Returns:
        ``{"a": path, "b": path, "n_a": rows, "n_b": rows, "shared": n, "metrics": {metric: {...}}}``
        where each metric holds both accuracies, the discordant counts and McNemar's p-values.

    Raises:
        BlocksftError: if the files share no problem id or no metric (e.g. GSM8K vs MATH).
    """
    rows_a, rows_b = read_rows(path_a), read_rows(path_b)
    by_id_a = {str(r["id"]): r for r in rows_a}
    by_id_b = {str(r["id"]): r for r in rows_b}
    shared = set(by_id_a) & set(by_id_b)
    if not shared:
        raise BlocksftError(
            f"{path_a} and {path_b} share no problem id: they are not results on the same problems"
        )
    metrics = [m for m in rows_a[0]["correct"] if m in rows_b[0]["correct"]]
    if not metrics:
        raise BlocksftError(f"{path_a} and {path_b} have no metric in common (different tasks?)")
    result = {
        "a": str(path_a),
        "b": str(path_b),
        "n_a": len(rows_a),
        "n_b": len(rows_b),
        "shared": len(shared),
    }
    result["metrics"] = {}
    for metric in metrics:
        cmp = paired_comparison(
            {i: bool(by_id_a[i]["correct"].get(metric)) for i in shared},
            {i: bool(by_id_b[i]["correct"].get(metric)) for i in shared},
        )
        result["metrics"][metric] = {
            "accuracy_a": cmp.accuracy_a,
            "accuracy_b": cmp.accuracy_b,
            "a_only": cmp.a_only,
            "b_only": cmp.b_only,
            "mcnemar_exact_p": cmp.p_exact,
            "mcnemar_chi2": cmp.chi2,
            "mcnemar_chi2_p": cmp.p_chi2,
        }
    return result


def format_comparison(result: dict) -> str:
    """A small text table of :func:`compare_files`' result."""
    lines = [
        f"A: {result['a']} ({result['n_a']} rows)",
        f"B: {result['b']} ({result['n_b']} rows)",
        f"shared problems: {result['shared']}",
        f"{'metric':<12} {'acc A':>7} {'acc B':>7} {'A-B':>7} {'A only':>7} {'B only':>7}"
        f" {'McNemar exact p':>16}",
    ]
    for metric, m in result["metrics"].items():
        diff = 100 * (m["accuracy_a"] - m["accuracy_b"])
        lines.append(
            f"{metric:<12} {100 * m['accuracy_a']:>6.1f}% {100 * m['accuracy_b']:>6.1f}% {diff:>+6.1f} "
            f"{m['a_only']:>7} {m['b_only']:>7} {m['mcnemar_exact_p']:>16.4g}"
        )
    lines.append(
        "A only / B only: problems that only A / only B solved (the discordant pairs McNemar tests)."
    )
    return "\n".join(lines)
