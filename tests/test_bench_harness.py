"""The statistics the benches report: paired ratios cancel a machine that drifts during the run."""

from __future__ import annotations

from bench.harness import paired


def test_paired_ratio_cancels_drift_that_a_ratio_of_medians_keeps():
    # the machine slows down 3x over the run; in every round attrib takes 1.02x the hooks' time
    drift = [1 + 2 * i / 99 for i in range(100)]
    hooks = [0.010 * d for d in drift]
    attrib = [0.0102 * d for d in drift]
    med, lo, hi = paired({"attrib": attrib, "hooks": hooks}, "attrib", "hooks")
    assert abs(med - 1.02) < 1e-12 and abs(lo - 1.02) < 1e-12 and abs(hi - 1.02) < 1e-12


def test_paired_interval_brackets_the_median_of_noisy_ratios():
    ratios = [1.0 + 0.001 * ((i * 37) % 101 - 50) for i in range(101)]   # 0.950 ... 1.050, median 1.000
    med, lo, hi = paired({"a": ratios, "b": [1.0] * 101}, "a", "b")
    assert abs(med - 1.0) < 1e-12
    assert 0.985 < lo < 1.0 < hi < 1.015        # rank interval 50 ± 9.8 of 101 sorted values


def test_paired_needs_both_series_complete():
    assert paired({"a": [1.0, 2.0], "b": [1.0]}, "a", "b") is None
    assert paired({"a": [1.0]}, "a", "b") is None
