"""Paired statistics for the benchmark's verdicts: t intervals, equivalence tests, Holm.

Seeds pair up across the settings of a table (the same seed gives the same
initialisation, data order and targets), so two settings are compared on their
per-seed differences: a t interval with n - 1 degrees of freedom, a two-sided
t test for a difference and two one-sided tests (TOST) for equivalence within
:data:`EQUIVALENCE_MARGIN`. :func:`holm` adjusts the p-values of a suite of
comparisons for their number.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from scipy import stats

# the level of every test, after the Holm adjustment
ALPHA = 0.05
# Two settings are "on par" when their difference is shown to lie within +-2 points of
# accuracy. At the tiny scale one accuracy on 1,000 test images has a binomial standard
# error of about 1.5 points and a setting's spread over seeds is 1-3 points, so smaller
# differences are below what one test split resolves; the paper's ablations argue about
# differences of several points.
EQUIVALENCE_MARGIN = 0.02


@dataclass(frozen=True)
class Paired:
    """The per-seed differences a - b of two paired samples and the tests on them.

    ``low``/``high`` bound the (unadjusted) ``confidence`` t interval of the mean
    difference; ``p`` is the two-sided p-value of "no difference"; ``p_equivalent``
    the TOST p-value of "the difference is at least ``margin`` either way". With one
    pair every statistic but the mean is nan.
    """

    diffs: tuple[float, ...]
    mean: float
    sd: float
    se: float
    df: int
    low: float
    high: float
    p: float
    p_equivalent: float
    margin: float
    confidence: float

    @property
    def n(self) -> int:
        return len(self.diffs)


def paired(a: Sequence[float], b: Sequence[float], *, margin: float = EQUIVALENCE_MARGIN,
           confidence: float = 0.95) -> Paired:
    """Compare ``a`` and ``b``, paired element by element (one element per seed)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples need the same non-zero length, got {len(a)} and "
                         f"{len(b)}")
    diffs = tuple(x - y for x, y in zip(a, b, strict=True))
    n, mean = len(diffs), statistics.fmean(diffs)
    nan = math.nan
    if n < 2:
        return Paired(diffs, mean, nan, nan, 0, nan, nan, nan, nan, margin, confidence)
    df = n - 1
    sd = statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    if se <= 1e-12 * max(1.0, abs(mean)):  # every seed gave the same difference
        p = 1.0 if mean == 0 else 0.0
        p_eq = 0.0 if abs(mean) < margin else 1.0
        return Paired(diffs, mean, 0.0, 0.0, df, mean, mean, p, p_eq, margin, confidence)
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = 2 * stats.t.sf(abs(mean) / se, df)
    # TOST: reject "mean <= -margin" and "mean >= +margin"; the larger p decides
    p_lower = stats.t.sf((mean + margin) / se, df)
    p_upper = stats.t.cdf((mean - margin) / se, df)
    return Paired(diffs, mean, sd, se, df, mean - half, mean + half, float(p),
                  float(max(p_lower, p_upper)), margin, confidence)


def holm(pvalues: Sequence[float], groups: Sequence[Hashable] | None = None) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (nan stays nan).

    ``groups`` names the comparison each p-value tests. Hypotheses of one group that
    cannot be true together, such as "no difference" and "a difference of at least the
    margin" about the same pair of settings, count once: at each step the multiplier
    is the number of groups that still have a hypothesis left (Shaffer's refinement of
    Holm's method; with one hypothesis per group it is Holm's).
    """
    groups = list(range(len(pvalues))) if groups is None else list(groups)
    if len(groups) != len(pvalues):
        raise ValueError("one group per p-value")
    order = sorted((i for i, p in enumerate(pvalues) if not math.isnan(p)),
                   key=lambda i: pvalues[i])
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for step, i in enumerate(order):
        left = len({groups[j] for j in order[step:]})
        running = max(running, min(1.0, left * pvalues[i]))
        adjusted[i] = running
    return adjusted


def decide(test: Paired, p_adjusted: float, p_equivalent_adjusted: float,
           alpha: float = ALPHA) -> str:
    """The verdict on a - b: "better", "worse", "on par" or "too few seeds to tell".

    Better or worse when the (adjusted) test rejects "no difference"; on par only when
    the (adjusted) equivalence test shows the difference within the margin; otherwise
    the seeds cannot tell.
    """
    if test.n < 2:
        return "too few seeds to tell"
    if p_adjusted < alpha:
        return "better" if test.mean > 0 else "worse"
    if p_equivalent_adjusted < alpha:
        return "on par"
    return "too few seeds to tell"


# the largest number of seeds :func:`seeds_to_decide` looks at
MOST_SEEDS = 50


def seeds_to_decide(test: Paired, comparisons: int, alpha: float = ALPHA) -> int | None:
    """How many seeds would decide this comparison if more seeds kept its mean and spread.

    The smallest n at which either the difference test or the equivalence test would
    reject at ``alpha / comparisons`` (Bonferroni: the strictest step of Holm's method
    over that many comparisons), with the observed mean difference and standard
    deviation. ``None`` past :data:`MOST_SEEDS` or when it cannot be estimated (one
    seed). A planning figure, not a test: the spread of 3 seeds is itself uncertain.
    """
    if test.n < 2 or math.isnan(test.sd):
        return None
    level = alpha / max(comparisons, 1)
    mean, margin = abs(test.mean), test.margin
    for n in range(2, MOST_SEEDS + 1):
        if test.sd == 0.0:
            return n
        se = test.sd / math.sqrt(n)
        if 2 * stats.t.sf(mean / se, n - 1) < level:
            return n
        if mean < margin and stats.t.sf((margin - mean) / se, n - 1) < level:
            return n
    return None
