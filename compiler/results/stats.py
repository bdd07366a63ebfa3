"""The statistics of a change between two sets of repeats (README "Comparing runs"), standard library only.

A change of B against A is the ratio of geometric means, with Welch's t interval on the log values (Welch 1947,
"The generalization of Student's problem when several different population variances are involved",
Biometrika 34:28-35): timings and rates are positive and their noise multiplicative, so the log scale makes a
+25% and a -20% the same distance. Values that are not all positive (an error count of 0) get the same interval
on the values themselves, relative to |A's mean|.

A verdict compares the interval with a band of +-P% (a threshold's, else DEFAULT_BAND): `no change` inside it,
`better`/`worse` (`changed` for a metric without a direction) wholly beyond it, `inconclusive` across an edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

DEFAULT_BAND = 5.0
"""percent: the band of `no change` for a metric no threshold names"""
DEFAULT_CONFIDENCE = 95.0
MAX_REPEATS = 10_000
"""repeats_needed beyond this is shown as unknown (the change sits on the band's edge)"""


# --- Student's t quantile ---------------------------------------------------------------------------------

def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom (df > 0, not necessarily whole: Welch's are not)."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def _bisect(cdf: Callable[[float], float], p: float) -> float:
    """The x >= 0 with cdf(x) = p for a rising cdf with cdf(0) = 0.5."""
    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if cdf(middle) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * high:
            break
    return (low + high) / 2.0


@lru_cache(maxsize=64)
def normal_quantile(p: float) -> float:
    """The z with P(Z <= z) = p, 0.5 <= p < 1."""
    return _bisect(lambda x: 0.5 * math.erfc(-x / math.sqrt(2.0)), p)


_LARGE_DF = 1e4
"""beyond this the incomplete beta loses digits; the expansion of A&S 26.7.5 is good to 1e-12 there"""


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, 0.5 <= p < 1: Newton's method on t_cdf from the expansion below, bisection when
    that does not settle (agrees with published tables to 1e-12);
    for df > 1e4 the Cornish-Fisher expansion about the normal quantile (Abramowitz & Stegun 26.7.5)."""
    if not 0.5 <= p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile({p}, {df})")
    if p == 0.5:
        return 0.0
    z = normal_quantile(p)
    terms = ((z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
             (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384)
    expansion = z + sum(term / df ** power for power, term in enumerate(terms, 1))
    if df > _LARGE_DF:
        return expansion
    return _newton(p, df, expansion) or _bisect(lambda x: t_cdf(x, df), p)


def _newton(p: float, df: float, start: float) -> float | None:
    """Newton's method on t_cdf from `start` (a few steps from the expansion); None when it does not settle, and
    the caller bisects."""
    scale = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    x = start
    for _ in range(30):
        if not math.isfinite(x) or x <= 0:
            return None
        density = math.exp(scale - (df + 1) / 2 * math.log1p(x * x / df))
        step = (t_cdf(x, df) - p) / density
        x -= step
        if abs(step) <= 1e-11 * abs(x):  # the next step would be below the digits t_cdf has
            return x if x > 0 and math.isfinite(x) else None
    return None


# --- the change of B against A --------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """B against A on a scale where the change is a difference: log values (`log`), or the values divided by
    |A's mean| (`linear`; the raw values when A's mean is 0)."""

    method: str
    difference: float
    """mean of B - mean of A on that scale"""
    low: float | None
    high: float | None
    """the confidence interval of `difference`; None when a side has a single value"""
    variances: tuple[float | None, float | None]
    """the sample variance of each side on that scale (None: one value)"""
    zero_base: bool = False
    """linear with A's mean 0: any change is infinite"""

    def percent(self, value: float) -> float:
        """A difference on this scale as a change in % of A."""
        if self.method == "log":
            try:
                return math.expm1(value) * 100.0
            except OverflowError:
                return math.inf
        if self.zero_base:
            return 0.0 if value == 0 else math.copysign(math.inf, value)
        return value * 100.0

    @property
    def change_percent(self) -> float:
        return self.percent(self.difference)

    @property
    def interval_percent(self) -> tuple[float, float] | None:
        if self.low is None or self.high is None:
            return None
        return self.percent(self.low), self.percent(self.high)

    def edges(self, band: float) -> tuple[float, float]:
        """The band of +-band % on this scale."""
        if self.method == "log":
            return (math.log1p(-band / 100.0) if band < 100.0 else -math.inf), math.log1p(band / 100.0)
        if self.zero_base:
            return 0.0, 0.0
        return -band / 100.0, band / 100.0


def mean_of(values: Sequence[float]) -> float:
    try:
        return math.fsum(values) / len(values)
    except OverflowError:  # the sum leaves the float range (1e308 + 1e308), the mean does not
        return math.fsum(x / len(values) for x in values)


def _mean_variance(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and sample variance (inf when the squares leave the float range, never an OverflowError)."""
    mean = mean_of(values)
    if len(values) < 2:
        return mean, None
    deviations = [x - mean for x in values]
    try:
        return mean, math.fsum(d * d for d in deviations) / (len(values) - 1)
    except (OverflowError, ValueError):
        return mean, math.inf


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float) -> tuple[float, float, float, float] | None:
    """(difference of means, low, high, degrees of freedom) of B - A at `confidence` percent (two-sided), by Welch's
    t; None when a side has fewer than 2 values."""
    if len(a) < 2 or len(b) < 2:
        return None
    mean_a, var_a = _mean_variance(a)
    mean_b, var_b = _mean_variance(b)
    assert var_a is not None and var_b is not None
    share_a, share_b = var_a / len(a), var_b / len(b)
    spread = math.sqrt(share_a + share_b)
    difference = mean_b - mean_a
    if spread == 0.0 or not math.isfinite(spread):
        return (difference, difference, difference, math.inf) if spread == 0.0 else (difference, -math.inf, math.inf, 1.0)
    total = share_a + share_b  # products, not **: a float ** that leaves the range raises, a product is inf
    df = total * total / (share_a * share_a / (len(a) - 1) + share_b * share_b / (len(b) - 1))
    if not df > 0 or not math.isfinite(df):  # inf / inf: the spread is beyond the float range
        return difference, -math.inf, math.inf, 1.0
    half = t_quantile(0.5 + confidence / 200.0, df) * spread
    return difference, difference - half, difference + half, df


def change(a: Sequence[float], b: Sequence[float], confidence: float = DEFAULT_CONFIDENCE,
           point_estimates: bool = False) -> Change:
    """The change of B's repeats against A's (both non-empty, finite). With `point_estimates`, a side with one
    value gives the point estimate as its own interval instead of none."""
    if min(a) > 0 and min(b) > 0:
        method, zero_base = "log", False
        xa, xb = [math.log(x) for x in a], [math.log(x) for x in b]
    else:
        method = "linear"
        base = abs(mean_of(a))
        zero_base = base == 0.0
        xa, xb = (list(a), list(b)) if zero_base else ([x / base for x in a], [x / base for x in b])
    found = welch_interval(xa, xb, confidence)
    mean_a, var_a = _mean_variance(xa)
    mean_b, var_b = _mean_variance(xb)
    difference = mean_b - mean_a
    low: float | None = None
    high: float | None = None
    if found is not None:
        _, low, high, _ = found
    elif point_estimates:
        low = high = difference
    return Change(method, difference, low, high, (var_a, var_b), zero_base)


def verdict(found: Change, direction: int, band: float) -> str:
    """`better`, `worse` (`changed` when the metric has no direction), `no change` or `inconclusive`."""
    if found.low is None or found.high is None:
        return "inconclusive"
    low_edge, high_edge = found.edges(band)
    if found.low >= low_edge and found.high <= high_edge:
        return "no change"
    way = 1 if found.low > high_edge else -1 if found.high < low_edge else 0
    if way == 0:
        return "inconclusive"
    if direction == 0:
        return "changed"
    return "better" if way * direction > 0 else "worse"


def beyond(found: Change, bad: int, percent: float) -> bool:
    """Whether the whole interval lies beyond `percent` % in the bad direction (+1: a rise, -1: a fall)."""
    if found.low is None or found.high is None:
        return False
    low_edge, high_edge = found.edges(percent)
    return found.low > high_edge if bad > 0 else found.high < low_edge


def repeats_needed(found: Change, band: float, confidence: float = DEFAULT_CONFIDENCE) -> int | None:
    """How many repeats per run would decide this change at the observed spread: the smallest n with
    t(1 - alpha/2, 2n - 2) * sqrt((s_A^2 + s_B^2) / n) < the distance of the observed difference from the nearest
    edge of the band (the precision form of the two-sample size formula, n = (s_A^2 + s_B^2) (t / margin)^2).
    A side with one value borrows the other's variance; None with no variance at all or no margin."""
    known = [v for v in found.variances if v is not None]
    if not known:
        return None
    total = sum(known) * 2 / len(known)
    low_edge, high_edge = found.edges(band)
    margin = min(abs(found.difference - low_edge), abs(found.difference - high_edge))
    if margin == 0.0 or not math.isfinite(margin) or not math.isfinite(total):
        return None
    if total == 0.0:
        return 2
    level = 0.5 + confidence / 200.0

    def enough(n: int) -> bool:
        return t_quantile(level, 2 * n - 2) * math.sqrt(total / n) < margin

    ratio = 1.959963984540054 / margin
    rough = total * ratio * ratio  # the normal quantile's n is a lower bound
    if rough > MAX_REPEATS or not enough(MAX_REPEATS):
        return None
    low, high = max(2, math.floor(rough)), MAX_REPEATS
    while low < high:  # t(2n - 2) * sqrt(total / n) falls as n grows
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle + 1, high)
    return low


def mean_interval(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, float] | None:
    """(mean, low, high): Student's t interval of the mean of repeats at `confidence` percent (two-sided),
    mean +- t(1 - alpha/2, n - 1) s / sqrt(n); None for fewer than 2 values."""
    if len(values) < 2:
        return None
    mean, variance = _mean_variance(values)
    assert variance is not None
    half = t_quantile(0.5 + confidence / 200.0, len(values) - 1) * math.sqrt(variance / len(values))
    return mean, mean - half, mean + half
