"""Answer extraction and scoring for GSM8K and MATH: hand-written tables, each case asserted."""

import threading

import pytest

from blocksft.evaluate import gsm8k
from blocksft.evaluate import math as math_task

# (model output, expected strict, expected flexible)
GSM8K_CASES = [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72\nThe answer is: 72", "72", "72"),
    ("The answer is: 18", "18", "18"),
    ("The answer is 18.", "18", "18"),
    ("the final answer is: 18 eggs", "18", "18"),
    ("She makes 9 * 2 = $18.\nThe answer is: $18", "18", "18"),
    ("The answer is: \\$18.00", "18", "18"),
    ("The answer is: 1,000", "1000", "1000"),
    ("The answer is: $1,234,567.", "1234567", "1234567"),
    ("The answer is: 1,000.50", "1000.5", "1000.5"),
    ("The answer is: -5", "-5", "-5"),
    ("He is down \u22127 dollars. The answer is: \u22127", "-7", "-7"),
    ("The answer is: -$5", "-5", "-5"),
    ("The answer is: 0.5", "0.5", "0.5"),
    ("The answer is: .25", "0.25", "0.25"),
    ("The answer is: 3/4", "0.75", "0.75"),
    ("The answer is: \\frac{3}{4}", "0.75", "0.75"),
    ("The answer is: \\dfrac{1}{3}", "1/3", "1/3"),
    ("The answer is: -\\frac{1}{2}", "-0.5", "-0.5"),
    ("The answer is: 25%", "25", "25"),
    ("The answer is: 60 miles per hour", "60", "60"),
    ("The answer is: **42**", "42", "42"),
    ("The answer is:\n\n42", "42", "42"),
    ("Some work.\n#### 1,234", "1234", "1234"),
    ("So she pays \\boxed{56} dollars.", "56", "56"),
    ("The total is \\boxed{\\text{18 dollars}}.", "18", "18"),
    ("The total is \\boxed{\\frac{7}{2}}", "3.5", "3.5"),
    # "The answer is" wins over an earlier #### and a box
    ("\\boxed{5}\n#### 6\nThe answer is: 7", "7", "7"),
    # repeated markers: the last one counts
    ("The answer is: 3. Wait, recount. The answer is: 4", "4", "4"),
    # a marker without a number falls back to the next marker kind
    ("The answer is five.\n#### 5", "5", "5"),
    # no marker: strict has nothing, flexible takes the last number
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars", None, "18"),
    ("x = -3 and 16-3 = 13", None, "13"),
    ("It costs $2,500 in total", None, "2500"),
    ("That leaves 7.50 dollars.", None, "7.5"),
    ("Half of it: 1/2", None, "0.5"),
    ("On 12/25/2020 it was sold", None, "2020"),
    ("I do not know.", None, None),
    ("", None, None),
    ("The answer is: unknown", None, None),
]


@pytest.mark.parametrize(("output", "strict", "flexible"), GSM8K_CASES)
def test_gsm8k_extraction(output, strict, flexible):
    assert gsm8k.extract_answer(output) == {"strict": strict, "flexible": flexible}


def test_gsm8k_table_size():
    assert len(GSM8K_CASES) >= 30


@pytest.mark.parametrize(
    ("prediction", "gold", "equal"),
    [
        ("18", "18", True),
        ("18.00", "18", True),
        ("$18", "18", True),
        ("1,000", "1000", True),
        ("0.75", "3/4", True),
        ("-5", "5", False),
        ("17", "18", False),
        (None, "18", False),
        ("18", None, False),
        ("abc", "18", False),
    ],
)
def test_gsm8k_equivalence(prediction, gold, equal):
    assert gsm8k.is_equivalent(prediction, gold) is equal


def test_gsm8k_score_flexible_never_below_strict():
    result = gsm8k.score("I think 3 + 4 = 7, so 7", "7")
    assert result == {
        "extracted": {"strict": None, "flexible": "7"},
        "correct": {"strict": False, "flexible": True},
    }
    result = gsm8k.score("The answer is: 7. Also 9", "7")
    assert result["correct"] == {"strict": True, "flexible": True}


# (model output, expected extracted answer, gold, math_verify correct, exact correct)
MATH_CASES = [
    ("So $x = \\boxed{5}$.", "5", "5", True, True),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    ("\\boxed{\\dfrac{1}{2}}", "\\dfrac{1}{2}", "\\frac{1}{2}", True, True),
    ("\\boxed{0.5}", "0.5", "\\frac{1}{2}", True, False),
    ("\\boxed{\\frac12}", "\\frac12", "\\frac{1}{2}", True, True),
    ("\\boxed{1/2}", "1/2", "\\frac{1}{2}", True, True),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True, True),
    (
        "nested \\boxed{\\frac{1}{\\sqrt{2}}} here",
        "\\frac{1}{\\sqrt{2}}",
        "\\frac{\\sqrt{2}}{2}",
        True,
        False,
    ),
    ("\\boxed{\\text{(A)}}", "\\text{(A)}", "\\text{(A)}", True, True),
    ("\\boxed{A}", "A", "\\text{(A)}", True, True),
    ("\\boxed{\\text{Monday}}", "\\text{Monday}", "\\text{Monday}", True, True),
    (
        "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}",
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        "(3,\\frac{\\pi}{2})",
        True,
        True,
    ),
    ("\\boxed{10\\%}", "10\\%", "10", True, True),
    ("\\boxed{30^\\circ}", "30^\\circ", "30", True, True),
    ("\\boxed{5\\text{ cm}}", "5\\text{ cm}", "5", True, True),
    ("\\boxed{x = 3}", "x = 3", "3", True, True),
    ("\\boxed{1,000}", "1,000", "1000", True, True),
    ("\\boxed{18.00}", "18.00", "18", True, True),
    ("\\boxed{-2}", "-2", "-2", True, True),
    ("\\boxed{-2}", "-2", "2", False, False),
    ("\\boxed{x^2+1}", "x^2+1", "1+x^2", True, False),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}", "\\{2,1\\}", True, False),
    ("\\boxed{[1,2)}", "[1,2)", "[1,2]", False, False),
    ("\\boxed{\\infty}", "\\infty", "\\infty", True, True),
    ("\\boxed{2\\sqrt{2}}", "2\\sqrt{2}", "2\\sqrt2", True, True),
    ("\\boxed{\\$5}", "\\$5", "5", True, True),
    ("first \\boxed{1}, finally \\boxed{2}", "2", "2", True, True),
    # the last box was cut off (generation ran out): no answer, an earlier box is not taken instead
    ("\\boxed{3} and a broken \\boxed{4", None, "3", False, False),
    ("\\boxed{3} cut \\boxed{4\nThe answer is: 4", "4", "4", True, True),
    ("\\boxed 7 apples", "7", "7", True, True),
    ("\\fbox{9}", "9", "9", True, True),
    # MetaMathQA style: a box and "The answer is:" agree; the box is read
    ("so the sum is $\\boxed{12}$.\nThe answer is: 12", "12", "12", True, True),
    # no box: "The answer is:" is read
    ("The answer is: \\frac{3}{4}", "\\frac{3}{4}", "\\frac{3}{4}", True, True),
    ("The answer is: $\\frac{3}{4}$.", "\\frac{3}{4}", "0.75", True, False),
    ("The answer is: 7", "7", "8", False, False),
    # no answer at all
    ("I am not sure.", None, "5", False, False),
    ("", None, "5", False, False),
    ("\\boxed{}", "", "5", False, False),
]


@pytest.mark.parametrize(("output", "extracted", "gold", "verify_ok", "exact_ok"), MATH_CASES)
def test_math_extraction_and_scoring(output, extracted, gold, verify_ok, exact_ok):
    assert math_task.extract_answer(output) == extracted
    result = math_task.score(output, gold)
    assert result["extracted"]["math_verify"] == extracted
    assert result["correct"] == {"math_verify": verify_ok, "exact": exact_ok}


def test_math_table_size():
    assert len(MATH_CASES) >= 30


@pytest.mark.parametrize(
    ("answer", "normalized"),
    [
        ("\\left( 3, \\dfrac{1}{2} \\right)", "(3,\\frac{1}{2})"),
        ("10\\%", "10"),
        ("5\\text{ cm}", "5"),
        ("\\text{(A)}", "A"),
        ("x = 3", "3"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\sqrt2", "\\sqrt{2}"),
        (".5", "0.5"),
        ("-0.0", "0"),
        ("\\!1\\,000", "1000"),
        ("\\boxed{7}", "7"),
        (None, None),
    ],
)
def test_math_normalize(answer, normalized):
    assert math_task.normalize_answer(answer) == normalized


@pytest.mark.parametrize(
    "source", ["\\boxed{a}b}", "\\boxed{\\frac{", "\\frac{1}{0}", "\\sqrt{-1}^{10^{10^{10}}}"]
)
def test_math_verify_never_raises(source):
    # the last source makes sympy work for minutes: the timeout turns it into "not equivalent"
    assert math_task.is_equivalent(source, "1", timeout_s=1) is False


def test_math_verify_off_main_thread():
    results = []
    thread = threading.Thread(target=lambda: results.append(math_task.is_equivalent("0.5", "\\frac{1}{2}")))
    thread.start()
    thread.join()
    assert results == [True]
