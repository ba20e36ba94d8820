"""MATH answer extraction and scoring: strings in, strings out (no torch).

Gold: the content of the last ``\\boxed{}`` of the reference solution (nested braces handled).
Prediction: the content of the model's last ``\\boxed{}``; when the output has no box, the text after
``The answer is:`` (MetaMathQA-trained models answer that way). Two metrics, both reported:

* ``math_verify``: symbolic/numeric equivalence by `math-verify` (``parse`` + ``verify``); a parse
  error or timeout counts as wrong for that row and never stops a run;
* ``exact``: string equality after :func:`normalize_answer` (spaces, ``\\left``/``\\right``, thin
  spaces, ``\\text{}``, ``\\dfrac``, units, degrees, percent signs, ``x =`` prefixes, ...), the
  scoring the paper was criticised for, made less brittle but still strict.
"""

from __future__ import annotations

import logging
import re
import threading

from math_verify import parse, verify

from blocksft.data.tasks import last_boxed

METRICS = ("math_verify", "exact")

_ANSWER_IS = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?", re.IGNORECASE)


def _answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].strip().split("\n", 1)[0].strip()
    rest = rest.strip("$ ").rstrip(".").strip("$ ")
    return rest or None


def extract_answer(text: str) -> str | None:
    """The model's answer: its last ``\\boxed{}``, else what follows ``The answer is:``, else None."""
    boxed = last_boxed(text)
    return boxed if boxed is not None else _answer_is(text)


# --- exact match after normalisation ----------------------------------------------------------

_REMOVE = [
    r"\\left(?![a-zA-Z])",
    r"\\right(?![a-zA-Z])",
    r"\\displaystyle",
    r"\\[!,;: ]",
    r"~",
    r"\\\$",
    r"\$",
    r"\^\s*\{?\s*\\circ\s*\}?",
    r"°",
    r"\\%",
    r"%",
]
_TEXT_COMMANDS = r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*"
_UNIT_WORDS = (
    r"(?:cm|m|km|mm|inch|inches|feet|foot|ft|meters?|units?|degrees?|dollars?|cents?|sq|square|"
    r"hours?|minutes?|seconds?|days?|weeks?|years?|mph|pounds?|lbs?|ounces?|oz|gallons?|miles?)"
)


def _unwrap_command(text: str, command: str) -> str:
    """Replace every ``<command>{X}`` by ``X`` (balanced braces)."""
    out = []
    i = 0
    pattern = re.compile(command + r"\{")
    while True:
        m = pattern.search(text, i)
        if m is None:
            out.append(text[i:])
            return "".join(out)
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        out.append(text[i : m.start()])
        out.append(text[m.end() : j - 1] if depth == 0 else text[m.end() :])
        i = j


def _strip_trailing_units(text: str) -> str:
    """Drop a trailing ``\\text{ cm}``-style unit (or a bare unit word) after a value."""
    text = re.sub(
        r"(?<=\S)\s*" + _TEXT_COMMANDS + r"\{\s*" + _UNIT_WORDS + r"(?:\^?\{?\d\}?)?\s*\}$", "", text
    )
    return re.sub(r"(?<=[\d}])\s*" + _UNIT_WORDS + r"(?:\^?\{?\d\}?)?$", "", text)


def _fix_fracs(text: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}``, ``\\sqrt3`` -> ``\\sqrt{3}``."""
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", text)
    text = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", text)
    return re.sub(r"\\sqrt(\d+|[a-zA-Z])", r"\\sqrt{\1}", text)


def _canonical_number(text: str) -> str:
    """``1,000`` -> ``1000``, ``18.00`` -> ``18``, ``.5`` -> ``0.5``, ``-0`` -> ``0``; else unchanged."""
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    m = re.fullmatch(r"(-?)(\d*)\.?(\d*)", text)
    if not m or not (m.group(2) or m.group(3)):
        return text
    sign, whole, frac = m.groups()
    frac = frac.rstrip("0")
    whole = whole.lstrip("0") or "0"
    number = whole + ("." + frac if frac else "")
    return number if number == "0" else sign + number


def normalize_answer(answer: str | None) -> str | None:
    """A canonical string for exact matching (spaces and LaTeX decoration removed).

    Examples: ``\\left( 3, \\dfrac{1}{2} \\right)`` -> ``(3,\\frac{1}{2})``; ``10\\%`` -> ``10``;
    ``5\\text{ cm}`` -> ``5``; ``\\text{(A)}`` -> ``(A)``; ``x = 3`` -> ``3``; ``1/2`` -> ``\\frac{1}{2}``.
    """
    if answer is None:
        return None
    text = answer.strip()
    while (inner := last_boxed(text)) is not None and text.startswith("\\boxed"):
        text = inner
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\n", " ")
    text = _strip_trailing_units(text.strip())
    for pattern in _REMOVE:
        text = re.sub(pattern, "", text)
    text = _unwrap_command(text, _TEXT_COMMANDS)
    text = _strip_trailing_units(text.strip())
    # "x = 3" -> "3", "y = 2x + 1" -> "2x+1": a one- or two-character left-hand side is a name
    m = re.fullmatch(r"\s*[a-zA-Z]\w?\s*=\s*(.+)", text)
    if m:
        text = m.group(1)
    text = re.sub(r"\s+", "", text).rstrip(".")
    text = re.sub(r"^\(([A-Za-z])\)$", r"\1", text)  # a multiple-choice letter: "(A)" -> "A"
    text = _fix_fracs(text)
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", text)
    if m:
        text = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    return _canonical_number(text)


def is_exact_match(prediction: str | None, gold: str | None) -> bool:
    """String equality after :func:`normalize_answer`; a missing answer is never right."""
    if prediction is None or gold is None:
        return False
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    return bool(ref) and pred == ref


# --- math-verify --------------------------------------------------------------------------------


def is_equivalent(prediction: str | None, gold: str | None, timeout_s: int = 5) -> bool:
    """Mathematical equivalence by `math-verify`; errors and timeouts count as not equivalent.

    Both answers are wrapped in ``\\boxed{}`` so that math-verify parses exactly them. Its timeouts
    (``timeout_s`` for parsing and again for verifying) use ``SIGALRM``, which only works in the
    main thread; elsewhere they are switched off.
    """
    if prediction is None or gold is None or not gold.strip():
        return False
    timeout = timeout_s if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout)
        pred_parsed = parse(f"\\boxed{{{prediction}}}", parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception as err:  # noqa: BLE001 - one unparsable answer must never end a long run
        logging.getLogger(__name__).debug("math-verify failed on %r vs %r: %s", prediction, gold, err)
        return False


def score(output: str, gold: str) -> dict[str, dict]:
    """Extract and score one output.

    Args:
        output: the model's decoded answer text.
        gold: the gold answer (the content of the reference solution's last ``\\boxed{}``).

    Returns:
        ``{"extracted": {metric: answer or None}, "correct": {metric: bool}}``; the ``exact`` entry
        holds the normalised answer that was compared.
    """
    answer = extract_answer(output)
    return {
        "extracted": {"math_verify": answer, "exact": normalize_answer(answer)},
        "correct": {"math_verify": is_equivalent(answer, gold), "exact": is_exact_match(answer, gold)},
    }
