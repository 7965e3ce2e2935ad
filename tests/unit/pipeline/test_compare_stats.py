"""Statistics of the nightly comparison on curves with a known answer (pipeline.compare.stats)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from pipeline.compare.stats import (
    area_under_curve,
    iterations_to_threshold,
    mean_curve_band,
    paired_bootstrap_gain,
    paired_t_interval,
    student_t_quantile,
)

# ------------------------------------------------------------------------------------ AUC, threshold


def test_auc_hand_computed_uneven_grid():
    # trapezoids: [0,1]: (0+1)/2 = 0.5; [1,2]: 1; [2,4]: 2*(1+3)/2 = 4  -> 5.5 over a span of 4
    assert area_under_curve([0, 1, 2, 4], [0, 1, 1, 3]) == pytest.approx(5.5 / 4, abs=1e-15)


def test_auc_of_a_line_is_its_midpoint_value():
    x = np.arange(3, 23)
    a, b = 0.2, 0.03
    assert area_under_curve(x, a + b * x) == pytest.approx(a + b * (3 + 22) / 2, abs=1e-12)


def test_auc_constant_and_single_point():
    assert area_under_curve([0, 5, 6], [0.7, 0.7, 0.7]) == pytest.approx(0.7, abs=1e-15)
    assert area_under_curve([4], [0.25]) == 0.25


@pytest.mark.parametrize(
    "x, y, match",
    [
        ([0, 1, 1], [0, 1, 2], "strictly increasing"),
        ([0, 1], [0, math.nan], "finite"),
        ([0, 1], [1], "length"),
    ],
)
def test_curve_validation(x, y, match):
    with pytest.raises(ValueError, match=match):
        area_under_curve(x, y)


def test_iterations_to_threshold_first_crossing():
    x = [0, 1, 2, 3, 4]
    y = [0.1, 0.4, 0.3, 0.5, 0.6]
    assert iterations_to_threshold(x, y, 0.4) == 1  # reaching it exactly counts
    assert iterations_to_threshold(x, y, 0.45) == 3  # the dip at 2 does not matter, the first crossing does
    assert iterations_to_threshold(x, y, 0.61) is None
    assert iterations_to_threshold(x, [3.0, 2.0, 1.0, 0.5, 0.2], 0.9, higher_is_better=False) == 3


# ------------------------------------------------------------------------------------- t quantiles


def test_student_t_quantile_closed_forms():
    for p in (0.6, 0.9, 0.975, 0.995):
        # dof 1 (Cauchy): tan(pi (p - 1/2)); dof 2: (2p - 1) / sqrt(2 p (1 - p))
        assert student_t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert student_t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
        assert student_t_quantile(1 - p, 5) == pytest.approx(-student_t_quantile(p, 5), rel=1e-12)
    # large dof -> the normal quantile
    assert student_t_quantile(0.975, 100_000) == pytest.approx(NormalDist().inv_cdf(0.975), abs=1e-4)


# ------------------------------------------------------------------------------- paired bootstrap


def _auc_per_seed(curves: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray([area_under_curve(x, c) for c in curves])


def test_known_gain_is_found_and_covered():
    """Variant curves = baseline curves + a known improvement + small noise; seeds share a large effect."""
    rng = np.random.default_rng(7)
    x = np.arange(20, dtype=float)
    seeds = 10
    seed_level = rng.normal(0.3, 0.1, size=(seeds, 1))  # shared by the two arms of a seed (pairing)
    base = seed_level + 0.01 * x + rng.normal(0, 0.02, size=(seeds, x.size))
    delta = 0.002 * x + 0.05  # true AUC gain = AUC(delta) = 0.05 + 0.002 * 19 / 2 = 0.069
    true_gain = area_under_curve(x, delta)
    variant = base + delta + rng.normal(0, 0.02, size=(seeds, x.size))
    result = paired_bootstrap_gain(_auc_per_seed(base, x), _auc_per_seed(variant, x), num_resamples=5000)
    assert result.significant and result.low > 0
    assert result.low <= true_gain <= result.high
    # the shared seed effect (sd 0.1) must not widen the interval: pairing removes it
    assert result.high - result.low < 0.03


def test_coverage_of_true_gain_is_near_nominal():
    rng = np.random.default_rng(11)
    seeds, replicates, covered = 30, 300, 0
    for r in range(replicates):
        b = rng.normal(0.4, 0.1, seeds)
        v = b + 0.03 + rng.normal(0, 0.05, seeds)  # true mean gain 0.03
        g = paired_bootstrap_gain(b, v, num_resamples=2000, rng_seed=r)
        covered += g.low <= 0.03 <= g.high
    assert 0.88 <= covered / replicates <= 0.99


def test_null_gain_false_positive_rate_is_near_alpha():
    """No true difference: 'significant' must happen at about the nominal 5% (binomial sd ~1.1%)."""
    rng = np.random.default_rng(2026)
    seeds, replicates = 30, 400
    hits = 0
    for r in range(replicates):
        b = rng.normal(0.5, 0.1, seeds)
        v = b + rng.normal(0, 0.05, seeds)
        hits += paired_bootstrap_gain(b, v, num_resamples=2000, rng_seed=r).significant
    assert 0.02 <= hits / replicates <= 0.09


def test_few_seeds_make_the_percentile_bootstrap_anticonservative():
    """The caveat the report prints: with 3 seeds the 95% interval is about [min, max] of the differences,
    which misses a null mean with probability 2 * (1/2)^3 = 25%; the paired t interval keeps ~5%."""
    rng = np.random.default_rng(3)
    replicates, boot_hits, t_hits = 400, 0, 0
    for r in range(replicates):
        b = rng.normal(0.5, 0.1, 3)
        v = b + rng.normal(0, 0.05, 3)
        boot_hits += paired_bootstrap_gain(b, v, num_resamples=2000, rng_seed=r).significant
        _, low, high = paired_t_interval(b, v)
        t_hits += low > 0 or high < 0
    assert 0.15 <= boot_hits / replicates <= 0.35
    assert t_hits / replicates <= 0.09


def test_bootstrap_is_deterministic_and_exact_on_degenerate_input():
    b = np.array([0.1, 0.2, 0.4, 0.3])
    v = np.array([0.2, 0.25, 0.5, 0.3])
    assert paired_bootstrap_gain(b, v, rng_seed=5) == paired_bootstrap_gain(b, v, rng_seed=5)
    same = paired_bootstrap_gain(b, b + 0.1)  # identical differences: the interval is that difference
    assert (
        same.gain == pytest.approx(0.1) and same.low == pytest.approx(0.1) and same.high == pytest.approx(0.1)
    )
    rel = paired_bootstrap_gain(b, 1.3 * b)  # variant 30% better on every seed
    assert rel.relative == pytest.approx(0.3) and rel.relative_low == pytest.approx(0.3)
    assert rel.relative_high == pytest.approx(0.3)


def test_bootstrap_matches_a_loop_reference():
    """The vectorised resampling equals an explicit loop over the same index draws."""
    rng_data = np.random.default_rng(0)
    b, v = rng_data.normal(size=6), rng_data.normal(size=6)
    res = paired_bootstrap_gain(b, v, num_resamples=500, confidence=0.9, rng_seed=42)
    rng = np.random.default_rng(42)
    idx = rng.integers(0, 6, size=(500, 6))
    gains = sorted(float(np.mean([v[i] - b[i] for i in row])) for row in idx)
    assert res.low == pytest.approx(np.quantile(gains, 0.05), abs=1e-12)
    assert res.high == pytest.approx(np.quantile(gains, 0.95), abs=1e-12)


def test_bootstrap_input_errors():
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        paired_bootstrap_gain(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        paired_bootstrap_gain(np.zeros(1), np.zeros(1))
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_gain(np.zeros(3), np.ones(3), confidence=1.5)


# -------------------------------------------------------------------------------------- curve bands


def test_t_band_two_seeds_closed_form():
    x = np.array([0.0, 1.0, 2.0])
    curves = np.array([[0.0, 0.2, 0.6], [0.2, 0.4, 0.4]])
    band = mean_curve_band(x, curves, confidence=0.95)
    # S = 2: sd/sqrt(2) = |a - b| / 2, t_{0.975, 1} = tan(0.475 pi)
    half = math.tan(0.475 * math.pi) * np.abs(curves[0] - curves[1]) / 2
    np.testing.assert_allclose(band.mean, curves.mean(axis=0), atol=1e-15)
    np.testing.assert_allclose(band.high - band.mean, half, rtol=1e-9)
    np.testing.assert_allclose(band.mean - band.low, half, rtol=1e-9)


def test_bootstrap_band_and_single_seed():
    rng = np.random.default_rng(1)
    x = np.arange(5.0)
    curves = rng.normal(size=(8, 5))
    band = mean_curve_band(x, curves, method="bootstrap")
    assert np.all(band.low <= band.mean) and np.all(band.mean <= band.high)
    assert np.all(band.low >= curves.min(axis=0)) and np.all(band.high <= curves.max(axis=0))
    one = mean_curve_band(x, curves[:1])
    np.testing.assert_array_equal(one.low, one.high)
    with pytest.raises(ValueError, match="valid: \\['bootstrap', 't'\\]"):
        mean_curve_band(x, curves, method="normal")


def test_report_significance_needs_both_intervals():
    """At 3 seeds a small, noisy gain can pass the percentile bootstrap but not the paired t interval."""
    from pipeline.compare.analysis import Gain

    base = np.array([0.30, 0.32, 0.34])
    noisy = base + np.array([0.001, 0.030, 0.005])  # all positive, very unequal: bootstrap CI > 0
    boot = paired_bootstrap_gain(base, noisy, num_resamples=4000, rng_seed=0)
    t = paired_t_interval(base, noisy, confidence=0.95)
    assert boot.significant and t[1] < 0 < t[2]
    assert not Gain("v", [0, 1, 2], boot.gain, boot.relative, boot, t).significant
    clear = base + np.array([0.020, 0.021, 0.022])
    boot, t = paired_bootstrap_gain(base, clear, rng_seed=0), paired_t_interval(base, clear)
    assert Gain("v", [0, 1, 2], boot.gain, boot.relative, boot, t).significant
    assert not Gain("v", [0], 0.02, 0.06, None, None).significant
