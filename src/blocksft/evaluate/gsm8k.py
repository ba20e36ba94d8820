"""GSM8K answer extraction and scoring: strings in, strings out (no torch).

Gold: the number after ``####`` in the reference solution, commas removed (read by the task loader,
:func:`blocksft.data.tasks.gsm8k_gold`).

Prediction, two metrics, both reported:

* ``strict``: the number the model declares as its answer, read from the first marker present in
  this order: ``The answer is[:]`` (how MetaMathQA-trained models answer), ``####``, ``\\boxed{}``.
  Within a marker kind the last occurrence wins. No marker: no answer.
* ``flexible``: the strict answer when there is one, otherwise the last number anywhere in the text.
  So every strict hit is also a flexible hit.

Numbers are compared as exact fractions after normalisation: thousands separators, ``$``, ``%``,
trailing periods and units are dropped, ``18.00 == 18``, ``3/4 == 0.75 == \\frac{3}{4}``, and a
leading ``-`` (or unicode minus) makes a number negative.
"""

from __future__ import annotations

import re
from fractions import Fraction

from blocksft.data.tasks import last_boxed

METRICS = ("strict", "flexible")

# A number: thousands-grouped or plain digits, optional decimals, or a bare ".5". A minus sign only
# counts when it does not follow a word character or ")" (so "16-3" is 16 and 3, not 16 and -3).
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_SIGN = r"(?<![\w)])[-\u2212](?=[\d.\\$])"
_TEX_FRAC = re.compile(
    r"(?P<sign>" + _SIGN + r")?\\[dt]?frac\s*\{\s*(?P<num>[^{}]+?)\s*\}\s*\{\s*(?P<den>[^{}]+?)\s*\}"
)
_SLASH_FRAC = re.compile(r"(?P<sign>" + _SIGN + r")?(?<![\d.,/])(?P<num>\d+)\s*/\s*(?P<den>\d+)(?![\d.,/])")
_PLAIN = re.compile(
    r"(?P<sign>" + _SIGN + r")?(?:\\?\$\s*)?(?P<sign2>" + _SIGN + r")?(?P<num>" + _NUMBER + r")"
)

_ANSWER_IS = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?", re.IGNORECASE)
_HASHES = re.compile(r"####")


def _to_fraction(text: str) -> Fraction | None:
    text = text.replace(",", "").strip()
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _number_spans(text: str) -> list[tuple[int, Fraction]]:
    """Every number in ``text`` as (start offset, value), in reading order.

    ``\\frac{a}{b}`` and ``a/b`` are read as one number each; the plain numbers inside them are
    not counted again.
    """
    found: list[tuple[int, int, Fraction]] = []
    taken: list[tuple[int, int]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in taken)

    for pattern in (_TEX_FRAC, _SLASH_FRAC):
        for m in pattern.finditer(text):
            num, den = _to_fraction(m["num"]), _to_fraction(m["den"])
            if num is None or den is None or den == 0 or not free(m.start(), m.end()):
                continue
            value = num / den
            found.append((m.start(), m.end(), -value if m["sign"] else value))
            taken.append((m.start(), m.end()))
    for m in _PLAIN.finditer(text):
        if not free(m.start(), m.end()):
            continue
        value = _to_fraction(m["num"])
        if value is not None:
            found.append((m.start(), m.end(), -value if (m["sign"] or m["sign2"]) else value))
    return [(start, value) for start, _, value in sorted(found)]


def format_number(value: Fraction) -> str:
    """A canonical string for a number: ``18``, ``-2.5``, ``1/3`` (a fraction only when the decimal
    would not terminate)."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    text = f"{float(value):.12f}".rstrip("0").rstrip(".")
    return text if Fraction(text) == value else f"{value.numerator}/{value.denominator}"


def normalize_number(text: str | None) -> str | None:
    """The canonical form of the first number in ``text`` (``"$1,000.00"`` -> ``"1000"``), or None."""
    if text is None:
        return None
    spans = _number_spans(text)
    return format_number(spans[0][1]) if spans else None


def _after_marker(text: str, marker: re.Pattern) -> str | None:
    """The answer text after the last occurrence of ``marker``: up to the end of that line."""
    matches = list(marker.finditer(text))
    for m in reversed(matches):
        rest = text[m.end() :].lstrip().split("\n", 1)[0]
        if _number_spans(rest):
            return rest
    return None


def _last_boxed_number_text(text: str) -> str | None:
    inner = last_boxed(text)
    return inner if inner is not None and _number_spans(inner) else None


def extract_strict(text: str) -> str | None:
    """The declared answer (``The answer is``, then ``####``, then ``\\boxed{}``), normalised."""
    for source in (
        _after_marker(text, _ANSWER_IS),
        _after_marker(text, _HASHES),
        _last_boxed_number_text(text),
    ):
        if source is not None:
            return normalize_number(source)
    return None


def extract_last_number(text: str) -> str | None:
    """The last number anywhere in ``text``, normalised."""
    spans = _number_spans(text)
    return format_number(spans[-1][1]) if spans else None


def extract_answer(text: str) -> dict[str, str | None]:
    """Both predictions of a model output: ``{"strict": ..., "flexible": ...}``."""
    strict = extract_strict(text)
    return {"strict": strict, "flexible": strict if strict is not None else extract_last_number(text)}


def is_equivalent(prediction: str | None, gold: str | None) -> bool:
    """Exact numeric equality of two (normalised or raw) answers; a missing answer is never right."""
    if prediction is None or gold is None:
        return False
    pred_spans, gold_spans = _number_spans(prediction), _number_spans(gold)
    if not pred_spans or not gold_spans:
        return False
    return pred_spans[0][1] == gold_spans[0][1]


def score(output: str, gold: str) -> dict[str, dict]:
    """Extract and score one output.

    Args:
        output: the model's decoded answer text.
        gold: the gold answer (a number, as the task loader gives it).

    Returns:
        ``{"extracted": {metric: answer or None}, "correct": {metric: bool}}`` for both metrics.
    """
    extracted = extract_answer(output)
    return {
        "extracted": extracted,
        "correct": {metric: is_equivalent(extracted[metric], gold) for metric in METRICS},
    }
