"""How benchmarks state a measured rate: the share, and the 95% interval that
the number of trials allows (no data needed)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
_spec = importlib.util.spec_from_file_location("benchmark_common",
                                               BENCHMARKS / "_common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_a_rate_comes_with_the_exact_interval_its_trials_allow():
    rate = common.rate_with_interval([True] * 4 + [False] * 542)
    assert rate["rate"] == pytest.approx(4 / 546, abs=1e-4)
    low, high = rate["ci95"]
    assert 0 < low < rate["rate"] < high
    assert high == pytest.approx(0.01865, abs=1e-4)  # Clopper-Pearson, 4 of 546


def test_none_passing_still_bounds_the_rate_above():
    # 0 of n: the exact upper bound is 1 - 0.025 ** (1 / n); with 546
    # negatives, none called a copy cannot show a rate under 0.5%
    rate = common.rate_with_interval([False] * 546)
    assert rate["rate"] == 0 and rate["ci95"][0] == 0
    assert rate["ci95"][1] == pytest.approx(1 - 0.025 ** (1 / 546), abs=1e-4)
    assert rate["ci95"][1] > 0.005


def test_the_interval_is_rounded_outwards():
    # a bound rounded towards the rate would claim more than was measured:
    # 0 of 546 allows up to 0.6733%, which is not "at most 0.67%"
    from scipy.stats import binomtest

    for hits, n in ((0, 546), (4, 546), (1, 3)):
        exact = binomtest(hits, n).proportion_ci(0.95, "exact")
        low, high = common.rate_with_interval([True] * hits + [False] * (n - hits))["ci95"]
        assert low <= exact.low and high >= exact.high
        assert exact.low - low < 1e-4 and high - exact.high < 1e-4


def test_a_rate_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no trials"):
        common.rate_with_interval([])
