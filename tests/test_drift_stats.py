"""Drift statistics without Spark, checked by hand with NumPy and against scipy's chi-square where they meet."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from sparkvision.drift.stats import (
    CONFIDENCE_EDGES,
    Profile,
    Snapshot,
    Thresholds,
    bin_index,
    category_psi,
    compare,
    feature_shift,
    histogram,
    parse_window,
    psi,
)


def test_psi_is_the_hand_computed_sum_and_zero_for_equal_shares():
    p, q = [50, 30, 20], [20, 30, 50]
    a, b = np.array(p) / 100, np.array(q) / 100
    assert psi(p, q) == pytest.approx(float(np.sum((b - a) * np.log(b / a))), rel=1e-12)
    assert psi(p, q) == pytest.approx(psi(q, p))  # symmetric
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-15)  # counts or shares alike
    assert psi([0, 0], [0, 5]) is None


def test_psi_floors_an_empty_bin_at_epsilon():
    got = psi([100, 0], [50, 50], epsilon=1e-4)
    want = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert got == pytest.approx(want, rel=1e-12)
    assert math.isfinite(got) and got > 4
    assert psi([5, 0, 5], [5, 0, 5]) == 0.0  # a bin empty on both sides adds nothing


def test_psi_of_small_shifts_is_close_to_the_symmetric_chi_square():
    """For shares q = p + d with small d, PSI ~ sum(d^2 / p): scipy's chi-square statistic of the shares."""
    from scipy.stats import chisquare

    p = np.array([0.1, 0.2, 0.3, 0.4])
    q = p + np.array([0.004, -0.003, 0.002, -0.003])
    chi2 = chisquare(q * 1e6, p * 1e6).statistic / 1e6
    assert psi(p, q) == pytest.approx(chi2, rel=0.02)


def test_category_psi_aligns_the_categories():
    assert category_psi({"a": 5, "b": 5}, {"b": 5, "a": 5}) == 0.0
    assert category_psi({"a": 10}, {"a": 5, "b": 5}) == pytest.approx(psi([10, 0], [5, 5]))
    assert category_psi({"a": 1}, {"a": 1}, ["a", "b", "c"]) == 0.0


def test_bins_put_a_value_on_an_edge_into_the_upper_bin_and_close_the_last():
    edges = CONFIDENCE_EDGES
    assert bin_index([0.0, 0.19, 0.2, 0.5, 0.999, 1.0], edges).tolist() == [0, 0, 1, 3, 9, 9]
    assert histogram([0.1, 0.55, 0.55, 1.0], edges) == [1, 0, 0, 2, 0, 0, 0, 0, 0, 1]
    snapshot = Snapshot(rows=4, error_rows=0, class_counts={}, confidence=histogram([0.1, 0.45, 0.5, 0.9], edges))
    assert snapshot.low_confidence_share == 0.5  # 0.1 and 0.45 are below 0.5; 0.5 itself is not


def _moments(x: np.ndarray) -> tuple[list[float], list[float], int]:
    return x.mean(axis=0).tolist(), x.var(axis=0, ddof=1).tolist(), len(x)


def test_feature_shift_is_the_hand_computed_noise_corrected_effect_size():
    rng = np.random.default_rng(0)
    ref = rng.normal(0.0, 2.0, size=(400, 64))
    cur = rng.normal(0.5, 2.0, size=(300, 64))  # every dimension moved by a quarter of a standard deviation
    m0, v0, n0 = _moments(ref)
    m1, v1, n1 = _moments(cur)
    scale = np.array(v0) + 1e-3 * np.mean(v0)
    by_hand = np.sqrt(np.mean(((np.array(m1) - m0) ** 2 - (np.array(v1) / n1 + np.array(v0) / n0)) / scale))
    got = feature_shift(m0, v0, n0, m1, v1, n1)
    assert got == pytest.approx(by_hand, rel=1e-12)
    assert got == pytest.approx(0.25, abs=0.03)


def test_feature_shift_stays_near_zero_for_samples_of_one_distribution_whatever_their_size():
    rng = np.random.default_rng(1)
    values = []
    for n in (30, 100, 1000):
        ref, cur = rng.normal(size=(200, 128)), rng.normal(size=(n, 128))
        values.append(feature_shift(*_moments(ref), *_moments(cur)))
    assert max(values) < 0.05, values  # the raw RMS z at n=30 would be about sqrt(1/200 + 1/30) = 0.2
    assert feature_shift([0.0], [1.0], 1, [0.0], [1.0], 10) is None
    with pytest.raises(ValueError, match="another backbone"):
        feature_shift([0.0, 0.0], [1.0, 1.0], 10, [0.0], [1.0], 10)


def test_compare_flags_what_passes_its_threshold_and_shows_the_rest():
    ref = Snapshot(rows=100, error_rows=0, class_counts={"a": 50, "b": 50}, confidence=[0] * 9 + [100],
                   image_rows=100, width=[100], height=[100], bytes=[100], modes={"RGB": 100},
                   feature_role="features", feature_rows=100, feature_mean=[0.0, 0.0], feature_var=[1.0, 1.0])
    profile = Profile(labels=["a", "b"], reference=ref, source="test")
    same = Snapshot(**{**ref.__dict__, "rows": 100})
    assert not any(s.drifted for s in compare(profile, same))
    shifted = Snapshot(**{**ref.__dict__, "class_counts": {"a": 90, "b": 10}, "rows": 110, "error_rows": 10,
                          "confidence": [10] + [0] * 8 + [90], "feature_mean": [1.0, 1.0]})
    judged = {s.name: s for s in compare(profile, shifted)}
    assert {n for n, s in judged.items() if s.drifted} == {"class_shares", "confidence", "error_share",
                                                           "feature_shift"}
    assert judged["low_confidence_share"].threshold is None and judged["low_confidence_share"].value == 0.1
    assert judged["error_share"].value == pytest.approx(10 / 110, abs=1e-4)
    loose = Thresholds(psi=10.0, feature_shift=10.0, error_share=0.5)
    assert not any(s.drifted for s in compare(profile, shifted, loose))


def test_a_profile_round_trips_and_refuses_other_bins():
    ref = Snapshot(rows=2, error_rows=0, class_counts={"a": 2}, confidence=[0] * 9 + [2],
                   feature_role="logits", feature_rows=2, feature_mean=[1.234567891], feature_var=[0.5])
    data = Profile(labels=["a"], reference=ref, source="s").to_dict()
    back = Profile.from_dict(data)
    assert back.reference.feature_mean == [1.2346] and back.labels == ["a"]
    with pytest.raises(ValueError, match="other bins"):
        Profile.from_dict({**data, "bins": {**data["bins"], "confidence": [0.0, 1.0]}})


def test_windows_and_thresholds_are_checked():
    assert parse_window("1d") == timedelta(days=1) and parse_window("90s") == timedelta(seconds=90)
    assert parse_window("1.5h") == timedelta(minutes=90)
    for bad in ("", "1", "d", "-1d", "0m", "1y"):
        with pytest.raises(ValueError, match="--window"):
            parse_window(bad)
    with pytest.raises(ValueError, match="psi"):
        Thresholds(psi=0)
