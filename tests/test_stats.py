"""The statistics of a change (compiler/results/stats.py) against published values and simulated noise."""

from __future__ import annotations

import math
import random

import pytest

from compiler.results.stats import DEFAULT_CONFIDENCE, Change, beyond, change, repeats_needed, t_cdf, t_quantile, verdict


# Student's t quantiles from a standard table (R's qt(p, df) to 12 digits)
@pytest.mark.parametrize(("p", "df", "expected"), [
    (0.975, 1, 12.7062047361747), (0.975, 2, 4.30265272974946), (0.975, 4, 2.77644510519779),
    (0.975, 6, 2.44691185114497), (0.975, 30, 2.04227245630124), (0.95, 3, 2.35336343480182),
    (0.995, 10, 3.16927267261695), (0.975, 100, 1.98397151852355),
])
def test_t_quantile_matches_the_table(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, rel=1e-9)
    assert t_cdf(expected, df) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize("df", [1.5, 3.7, 12.25])
def test_t_cdf_of_a_fractional_df_is_the_integral_of_the_density(df):
    """Welch's degrees of freedom are not whole: check the CDF against Simpson's rule on the density."""
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    steps, top = 20000, 2.5
    width = top / steps
    density = [scale * (1 + (i * width) ** 2 / df) ** (-(df + 1) / 2) for i in range(steps + 1)]
    area = width / 3 * (density[0] + density[-1] + 4 * sum(density[1:-1:2]) + 2 * sum(density[2:-1:2]))
    assert t_cdf(top, df) == pytest.approx(0.5 + area, rel=1e-10)
    assert t_quantile(0.5 + area, df) == pytest.approx(top, rel=1e-9)


def test_t_quantile_for_many_degrees_of_freedom_joins_the_normal():
    z = 1.95996398454005  # the normal 97.5% quantile
    assert t_quantile(0.975, 1e12) == pytest.approx(z, rel=1e-11)
    # both methods agree where one hands over to the other
    assert t_quantile(0.975, 10_000) == pytest.approx(t_quantile(0.975, 10_000.001), rel=1e-10)


def test_t_cdf_is_symmetric_and_rejects_a_lower_tail_quantile():
    assert t_cdf(-2.0, 5) + t_cdf(2.0, 5) == pytest.approx(1.0)
    assert t_cdf(0.0, 3) == 0.5 and t_quantile(0.5, 3) == 0.0
    with pytest.raises(ValueError):
        t_quantile(0.4, 3)


def test_a_doubling_is_a_change_of_plus_100_percent_in_the_log_interval():
    found = change([10.0, 10.0], [20.0, 20.0])
    assert found.method == "log" and found.change_percent == pytest.approx(100.0)
    assert found.interval_percent == pytest.approx((100.0, 100.0))  # no spread: the interval is the point
    assert verdict(found, -1, 10) == "worse" and verdict(found, 1, 10) == "better" and verdict(found, 0, 10) == "changed"
    assert beyond(found, 1, 99) and not beyond(found, 1, 100) and not beyond(found, -1, 10)


def test_the_interval_is_welchs_on_the_logs():
    a, b = [100.0, 110.0, 95.0, 105.0], [104.0, 98.0, 112.0, 101.0]
    found = change(a, b)
    la, lb = [math.log(x) for x in a], [math.log(x) for x in b]
    ma, mb = sum(la) / 4, sum(lb) / 4
    va, vb = (sum((x - ma) ** 2 for x in la) / 3), (sum((x - mb) ** 2 for x in lb) / 3)
    se = math.sqrt(va / 4 + vb / 4)
    df = (va / 4 + vb / 4) ** 2 / ((va / 4) ** 2 / 3 + (vb / 4) ** 2 / 3)
    half = t_quantile(0.975, df) * se
    assert found.low == pytest.approx(mb - ma - half) and found.high == pytest.approx(mb - ma + half)
    low, high = found.interval_percent or (0, 0)
    assert low < found.change_percent < high and low < 0 < high
    assert verdict(found, -1, 10) == "inconclusive" and verdict(found, -1, 20) == "no change"


def test_one_repeat_is_inconclusive_unless_point_estimates():
    assert change([2.0], [2.5]).interval_percent is None
    assert verdict(change([2.0], [2.5]), -1, 10) == "inconclusive"
    found = change([2.0], [2.5], point_estimates=True)
    assert found.interval_percent == pytest.approx((25.0, 25.0)) and verdict(found, -1, 10) == "worse"


def test_values_not_all_positive_use_the_linear_interval():
    found = change([0.0, 0.0], [3.0, 3.0])
    assert found.method == "linear" and found.change_percent == math.inf and verdict(found, -1, 50) == "worse"
    assert verdict(change([0.0, 0.0], [0.0, 0.0]), -1, 5) == "no change"
    found = change([-1.0, 1.0, 0.0], [10.0, 12.0, 11.0])
    assert found.method == "linear" and found.change_percent == math.inf  # A's mean is 0
    found = change([4.0, 0.0], [4.0, 2.0])
    assert found.change_percent == pytest.approx(50.0)


def test_repeats_needed_shrinks_the_interval_to_decide():
    found = change([100.0, 115.0, 90.0], [118.0, 140.0, 122.0])  # +25% [-3%, +61%]
    assert verdict(found, -1, 10) == "inconclusive"
    needed = repeats_needed(found, 10)
    assert needed is not None and needed > 3
    # at the same spread and change, that many repeats decide: rebuild both sides with the observed statistics
    va, vb = found.variances
    assert va is not None and vb is not None
    spread = math.sqrt((va + vb) / needed)
    half = t_quantile(0.975, 2 * needed - 2) * spread
    assert found.difference - half > math.log(1.1)
    half_before = t_quantile(0.975, 2 * needed - 4) * math.sqrt((va + vb) / (needed - 1))
    assert found.difference - half_before <= math.log(1.1)  # and one fewer does not


def test_repeats_needed_is_unknown_without_any_spread_or_on_the_edge():
    assert repeats_needed(change([1.0], [2.0]), 10) is None
    on_edge = Change("log", math.log1p(0.1), 0.0, 0.2, (0.01, 0.01))
    assert repeats_needed(on_edge, 10) is None  # no number of repeats moves the interval off the edge
    # a side with one value borrows the other's variance; n = 2 gives 4.30 * 0.1 > log(1.5) - 0.003, n = 3 2.78 * 0.082 < it
    assert repeats_needed(change([5.0], [5.0, 5.5, 4.5]), 50) == 3


def test_the_false_alarm_rate_of_an_interval_at_zero_band_is_the_stated_one():
    """Over many seeds of identical log-normal runs, a 95% interval misses the true change (0) about 5% of the
    time: the interval is what it says (the gate, which needs the whole interval beyond a band, fires less)."""
    rng = random.Random(19)
    misses = 0
    trials = 1000
    for _ in range(trials):
        a = [math.exp(rng.gauss(0, 0.15)) for _ in range(4)]
        b = [math.exp(rng.gauss(0, 0.15)) for _ in range(4)]
        found = change(a, b, DEFAULT_CONFIDENCE)
        assert found.low is not None and found.high is not None
        misses += not found.low <= 0 <= found.high
    assert 0.03 < misses / trials < 0.07


@pytest.mark.parametrize(("a", "b"), [
    ([-1e308, -1e308], [-1e308, -1e308]), ([1e308, 1e308, -1e308], [1e308, -1e308]), ([1e308, -1e308], [0.0, 1.0]),
    ([1e-300, 1e308], [1e308, 1e-300]), ([1e200, -1e200, 1e154], [1.0, 2.0]), ([0.0, 1e-320], [1e-320, 0.0]),
    ([1e-320, 2e-320], [1e308, 1.5e308]),
])
def test_numbers_near_the_float_range_never_raise(a, b):
    found = change(a, b)
    verdict(found, -1, 10)
    repeats_needed(found, 10)


def test_the_interval_of_a_mean_is_students_t():
    """3 repeats 9, 10, 11: mean 10, s = 1, t(0.975, 2) = 4.302653: 10 +- 4.302653 / sqrt(3)."""
    from compiler.results.stats import mean_interval

    mean, low, high = mean_interval([9.0, 10.0, 11.0])
    assert mean == 10.0 and high - mean == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6) and mean - low == pytest.approx(high - mean)
    assert mean_interval([5.0]) is None and mean_interval([2.0, 2.0]) == (2.0, 2.0, 2.0)
