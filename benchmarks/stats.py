"""The benchmark's statistics: summaries over seeds, paired tests, and the claims' verdicts.

Seeds pair up across the settings of a table (the same seed gives the same
initialisation, data order and targets), so two settings are compared on their
per-seed differences: a t interval with n - 1 degrees of freedom, a two-sided
t test for a difference and two one-sided tests (TOST) for equivalence within
:data:`EQUIVALENCE_MARGIN`. :func:`holm` adjusts the p-values of a suite of
comparisons for their number; :func:`assess` checks every claim of the measured
tables that way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

from scipy import stats

from benchmarks.records import Measurement
from benchmarks.tables import RANDOM_INIT, TABLES, Claim, Table

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


# ---------------------------------------------------------------- over seeds and claims


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and count of a metric over seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        """The statistics of ``values``, one per seed."""
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else
                   0.0, len(values))

    def __str__(self) -> str:
        if self.n > 1:
            return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}"
        return f"{100 * self.mean:.1f}"


def summarise(measurements: list[Measurement], metric: str, which: str = "trained"
              ) -> dict[str, Stat]:
    """Per setting, the statistics of ``metric`` over seeds."""
    values: dict[str, list[float]] = {}
    for m in measurements:
        source = m.trained if which == "trained" else m.random_init
        if metric in source:
            values.setdefault(m.setting, []).append(source[metric])
    return {label: Stat.of(v) for label, v in values.items()}


@dataclass(frozen=True)
class Finding:
    """One claim checked on one probe: the paired test, its Holm-adjusted p-values, the verdict.

    ``verdict`` is about a - b ("better", "worse", "on par", "too few seeds to tell" or
    "not measured"); :attr:`against_paper` says what it means for the paper's claim.
    """

    table: str
    claim: Claim
    metric: str
    test: Paired | None
    p_holm: float = math.nan
    p_equivalent_holm: float = math.nan
    verdict: str = "not measured"

    @property
    def against_paper(self) -> str:
        """What the verdict means for the paper's claim: reproduced, contradicted, not shown..."""
        if not self.claim.paper:
            return "no claim in the paper"
        if self.verdict in ("not measured", "too few seeds to tell"):
            return "not shown"
        if self.claim.kind == "on_par":
            meaning = "reproduced" if self.verdict == "on par" else "not reproduced: they differ"
        else:
            meaning = {"better": "reproduced", "worse": "contradicted"}.get(
                self.verdict, "not reproduced: on par")
        return f"{meaning} ({self.claim.caveat})" if self.claim.caveat else meaning


def claim_values(table: Table, claim: Claim, metric: str, measurements: list[Measurement]
                 ) -> tuple[list[int], list[float], list[float]]:
    """The seeds both sides of ``claim`` were measured on, and each side's value per seed."""
    def value(m: Measurement, label: str) -> float | None:
        if table.curve_epochs:
            epochs = sorted(m.curve)
            epoch = epochs[-1] if label == "last" and epochs else int(label)
            return m.curve.get(epoch, {}).get(metric)
        if label == RANDOM_INIT:
            return m.random_init.get(metric)
        if metric not in m.trained:
            return None
        if claim.effect:
            base = m.random_init.get(metric)
            return None if base is None else m.trained[metric] - base
        return m.trained[metric]

    def side(label: str) -> dict[int, float]:
        setting = claim.a if label == RANDOM_INIT else label
        out = {}
        for m in measurements:  # a curve table has one setting, its claims compare epochs
            if (table.curve_epochs or m.setting == setting) and (v := value(m, label)) is not None:
                out[m.seed] = v
        return out

    a, b = side(claim.a), side(claim.b)
    seeds = sorted(set(a) & set(b))
    return seeds, [a[s] for s in seeds], [b[s] for s in seeds]


def assess(suite: dict[str, list[Measurement]]) -> list[Finding]:
    """Every claim of the measured tables on every probe, Holm-adjusted across the suite.

    Each comparison contributes its difference test and its equivalence test; the two
    cannot both have a true null hypothesis, so they count as one comparison in the
    adjustment (:func:`benchmarks.stats.holm`).
    """
    findings: list[Finding] = []
    for key, measurements in suite.items():
        table = TABLES[key]
        measured = ({k for m in measurements for e in m.curve.values() for k in e}
                    | {k for m in measurements for k in m.trained})
        for claim in table.claims:
            for metric in claim.metrics:
                if metric not in measured:
                    continue
                seeds, a, b = claim_values(table, claim, metric, measurements)
                findings.append(Finding(key, claim, metric, paired(a, b) if seeds else None))
    tested = [i for i, f in enumerate(findings) if f.test is not None and f.test.n > 1]
    pvalues = [p for i in tested for p in (findings[i].test.p, findings[i].test.p_equivalent)]
    adjusted = holm(pvalues, [i for i in tested for _ in range(2)])
    out = list(findings)
    for j, i in enumerate(tested):
        f = findings[i]
        p, p_eq = adjusted[2 * j], adjusted[2 * j + 1]
        out[i] = replace(f, p_holm=p, p_equivalent_holm=p_eq, verdict=decide(f.test, p, p_eq))
    for i, f in enumerate(out):
        if f.test is not None and f.test.n < 2:
            out[i] = replace(f, verdict="too few seeds to tell")
    return out


def curve_summary(measurements: list[Measurement]) -> dict[int, dict[str, Stat]]:
    """Per epoch, the statistics of each curve value over seeds."""
    epochs = sorted({e for m in measurements for e in m.curve})
    out: dict[int, dict[str, Stat]] = {}
    for e in epochs:
        keys = sorted({k for m in measurements for k in m.curve.get(e, {})})
        out[e] = {k: Stat.of([m.curve[e][k] for m in measurements if e in m.curve]) for k in keys}
    return out


def curve_verdict(summary: dict[int, dict[str, Stat]], key: str = "linear_test") -> str:
    """The curve's shape, described from the means (saturation is not tested: the growth
    itself is a claim of the table, checked paired by seed like the others)."""
    epochs = [e for e in summary if key in summary[e]]
    if len(epochs) < 3:
        return "not measured"
    first, last = summary[epochs[0]][key], summary[epochs[-1]][key]
    mid = epochs[len(epochs) // 2]
    early = summary[mid][key].mean - first.mean
    late = last.mean - summary[mid][key].mean
    span = (f"epoch {epochs[0]} {first}% -> epoch {mid} {summary[mid][key]}% -> "
            f"epoch {epochs[-1]} {last}%")
    gains = (f"{100 * early:+.1f} points over epochs {epochs[0]}-{mid}, {100 * late:+.1f} over "
             f"{mid}-{epochs[-1]}")
    if late <= 0 < early:
        shape = "flat or falling in the later epochs"
    elif late < early:
        shape = "gains less in the later epochs"
    else:
        shape = "still rising at the last epoch, no saturation in sight"
    return f"{shape} ({gains}; means, not tested: {span})"
