"""Confidence intervals and the paired test for accuracies (stdlib only).

Written here rather than taken from scipy/statsmodels: three closed formulas do not justify a
dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 % and 100 %.

    Args:
        correct: number of successes.
        total: number of trials; 0 gives the uninformative interval (0, 1).

    Returns:
        ``(low, high)``.
    """
    if not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total, got correct={correct}, total={total}")
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    # At 0 or n successes the bound is exactly 0 or 1 (the formula leaves rounding noise there).
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    Under the null hypothesis each of the ``n = b + c`` discordant pairs favours either system with
    probability 1/2, so the p-value is ``min(1, 2 * P[Binomial(n, 1/2) <= min(b, c)])``.

    Args:
        b: pairs that system A got right and system B wrong.
        c: pairs that system B got right and system A wrong.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def mcnemar_chi2(b: int, c: int, continuity: bool = True) -> tuple[float, float]:
    """McNemar's chi-squared test (1 degree of freedom), with Edwards' continuity correction.

    Returns:
        ``(statistic, p_value)``; ``(0.0, 1.0)`` when there are no discordant pairs.
    """
    n = b + c
    if n == 0:
        return 0.0, 1.0
    diff = max(abs(b - c) - (1 if continuity else 0), 0)
    statistic = diff * diff / n
    return statistic, math.erfc(math.sqrt(statistic / 2))  # survival function of chi2(1)


@dataclass(frozen=True)
class PairedComparison:
    """Two systems scored on the same problems."""

    n: int
    correct_a: int
    correct_b: int
    a_only: int  # b: A right, B wrong
    b_only: int  # c: B right, A wrong
    p_exact: float
    chi2: float
    p_chi2: float

    @property
    def accuracy_a(self) -> float:
        return self.correct_a / self.n

    @property
    def accuracy_b(self) -> float:
        return self.correct_b / self.n


def paired_comparison(a: dict[str, bool], b: dict[str, bool]) -> PairedComparison:
    """Compare two systems on the ids both scored (McNemar's exact and chi-squared tests).

    Args:
        a: id -> correct, for system A.
        b: id -> correct, for system B.

    Raises:
        ValueError: when the two share no id.
    """
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("the two result sets share no problem id")
    a_only = sum(1 for i in shared if a[i] and not b[i])
    b_only = sum(1 for i in shared if b[i] and not a[i])
    chi2, p_chi2 = mcnemar_chi2(a_only, b_only)
    return PairedComparison(
        n=len(shared),
        correct_a=sum(1 for i in shared if a[i]),
        correct_b=sum(1 for i in shared if b[i]),
        a_only=a_only,
        b_only=b_only,
        p_exact=mcnemar_exact(a_only, b_only),
        chi2=chi2,
        p_chi2=p_chi2,
    )
