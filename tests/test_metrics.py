"""Tests of atom3d.evaluation.metrics against hand-computed answers and invariants."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from atom3d.evaluation.metrics import (
    aggregate,
    breakdown,
    column_metrics,
    confusion_matrix,
    ece,
    match_columns,
    reliability_curve,
)

SPACING_A = 4.0  # lattice spacing of the hand-made columns, >> the matching cut
CUT_A = 1.0


def lattice(n: int) -> np.ndarray:
    """``(n, 2)`` column positions [Å] on a square lattice, 5 per row."""
    k = np.arange(n)
    return np.stack([k % 5, k // 5], axis=1) * SPACING_A


def hand_made_case() -> tuple[dict, dict]:
    """10 true columns; 8 found (5 exact, 2 off by one, 1 off by 3) + 2 far false positives."""
    true_xy = lattice(10)
    true_depth = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    found = np.arange(8)  # columns 8 and 9 are missed
    jitter = np.array([[0.3, 0.0], [0.0, -0.5], [0.2, 0.2], [-0.7, 0.0],
                       [0.0, 0.9], [0.1, 0.1], [-0.4, 0.4], [0.0, 0.0]])
    pred_depth = true_depth[found] + np.array([0, 0, 0, 0, 0, 1, -1, 3])
    far = np.array([[100.0, 100.0], [-50.0, 2.0]])
    pred_xy = np.concatenate([true_xy[found] + jitter, far])
    pred = {"x": pred_xy[:, 0], "y": pred_xy[:, 1],
            "depth": np.concatenate([pred_depth, [4, 4]]),
            "confidence": np.full(10, 0.5)}
    true = {"x": true_xy[:, 0], "y": true_xy[:, 1], "depth": true_depth}
    return pred, true


def test_hand_made_detection_and_depth_scores():
    pred, true = hand_made_case()
    m = column_metrics(pred, true, CUT_A)
    assert (m["tp"], m["fp"], m["fn"], m["n_matched"]) == (8, 2, 2, 8)
    assert m["precision"] == pytest.approx(0.8)
    assert m["recall"] == pytest.approx(0.8)
    assert m["f1"] == pytest.approx(0.8)
    assert m["exact"] == pytest.approx(5 / 8)
    assert m["within1"] == pytest.approx(7 / 8)
    assert m["mae"] == pytest.approx((0 * 5 + 1 + 1 + 3) / 8)
    np.testing.assert_array_equal(m["pred_idx"], np.arange(8))
    np.testing.assert_array_equal(m["true_idx"], np.arange(8))
    # all confidences 0.5 in one bin, accuracy 5/8
    assert m["ece"] == pytest.approx(abs(5 / 8 - 0.5))
    assert m["mean_distance_A"] == pytest.approx(np.mean([0.3, 0.5, np.hypot(.2, .2), 0.7, 0.9,
                                                          np.hypot(.1, .1), np.hypot(.4, .4), 0]))


def test_no_predictions_gives_nan_scores():
    _, true = hand_made_case()
    empty = {"x": [], "y": [], "depth": [], "confidence": []}
    m = column_metrics(empty, true, CUT_A)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 10)
    assert np.isnan(m["precision"]) and m["recall"] == 0 and m["f1"] == 0
    assert np.isnan(m["exact"]) and np.isnan(m["mae"]) and np.isnan(m["ece"])


def test_matching_respects_the_distance_cut():
    true_xy = np.array([[0.0, 0.0], [10.0, 0.0]])
    pred_xy = np.array([[0.99, 0.0], [11.01, 0.0]])
    pi, ti = match_columns(pred_xy, true_xy, 1.0)
    np.testing.assert_array_equal(pi, [0])
    np.testing.assert_array_equal(ti, [0])
    assert match_columns(pred_xy, true_xy, 0.5)[0].size == 0


def test_matching_maximises_the_number_of_pairs():
    """Nearest-first greedy matching pairs A with t1 and leaves B and t0 unmatched."""
    true_xy = np.array([[0.0, 0.0], [1.6, 0.0]])
    pred_xy = np.array([[0.9, 0.0], [2.5, 0.0]])  # A: 0.9 from t0, 0.7 from t1; B: 0.9 from t1
    pi, ti = match_columns(pred_xy, true_xy, 1.0)
    np.testing.assert_array_equal(pi, [0, 1])
    np.testing.assert_array_equal(ti, [0, 1])


def test_matching_minimises_total_distance():
    true_xy = np.array([[0.0, 0.0], [1.0, 0.0]])
    pred_xy = np.array([[1.1, 0.0], [0.1, 0.0]])
    pi, ti = match_columns(pred_xy, true_xy, 2.0)
    np.testing.assert_array_equal(pi, [0, 1])
    np.testing.assert_array_equal(ti, [1, 0])


def test_matching_a_thousand_columns():
    rng = np.random.default_rng(1)
    true_xy = lattice(1000) * 0.75  # 3 Å spacing
    pred_xy = true_xy + rng.normal(0, 0.3, true_xy.shape)
    pi, ti = match_columns(pred_xy, true_xy, 1.0)
    assert len(pi) > 990
    assert np.all(np.hypot(*(pred_xy[pi] - true_xy[ti]).T) <= 1.0)


points = st.lists(st.tuples(st.floats(0, 6, allow_subnormal=False),
                            st.floats(0, 6, allow_subnormal=False)), max_size=12)


@given(pred=points, true=points, cut=st.floats(0.1, 3.0))
@settings(max_examples=150, deadline=None)
def test_matching_equals_dense_hungarian(pred, true, cut):
    """Same number of pairs and same total distance as one dense assignment."""
    pred_xy, true_xy = np.array(pred).reshape(-1, 2), np.array(true).reshape(-1, 2)
    pi, ti = match_columns(pred_xy, true_xy, cut)
    assert len(set(pi.tolist())) == len(pi) and len(set(ti.tolist())) == len(ti)
    d = np.hypot(*(pred_xy[pi] - true_xy[ti]).T) if len(pi) else np.zeros(0)
    assert np.all(d <= cut)
    if len(pred_xy) == 0 or len(true_xy) == 0:
        assert len(pi) == 0
        return
    dist = cdist(pred_xy, true_xy)
    big = 1e6
    cost = np.where(dist <= cut, dist, big)
    r, c = linear_sum_assignment(cost)
    ok = cost[r, c] < big
    assert len(pi) == ok.sum()
    assert d.sum() == pytest.approx(dist[r[ok], c[ok]].sum(), abs=1e-9)


@given(seed=st.integers(0, 2**32 - 1), n_true=st.integers(0, 30), data=st.data())
@settings(max_examples=60, deadline=None)
def test_permuting_predictions_does_not_change_metrics(seed, n_true, data):
    rng = np.random.default_rng(seed)
    true_xy = lattice(n_true)
    found = rng.random(n_true) < 0.7
    pred_xy = np.concatenate([true_xy[found] + rng.uniform(-0.6, 0.6, (found.sum(), 2)),
                              rng.uniform(-40, -20, (data.draw(st.integers(0, 5)), 2))])
    n_pred = len(pred_xy)
    pred = {"x": pred_xy[:, 0], "y": pred_xy[:, 1], "depth": rng.integers(1, 6, n_pred),
            "confidence": rng.uniform(0, 1, n_pred)}
    true = {"x": true_xy[:, 0], "y": true_xy[:, 1], "depth": rng.integers(1, 6, n_true)}
    perm = data.draw(st.permutations(range(n_pred)))
    shuffled = {k: np.asarray(v)[np.array(perm, dtype=int)] for k, v in pred.items()}

    a, b = column_metrics(pred, true, CUT_A), column_metrics(shuffled, true, CUT_A)
    for key in ("tp", "fp", "fn", "precision", "recall", "f1", "exact", "within1", "mae"):
        np.testing.assert_equal(a[key], b[key])
    np.testing.assert_allclose(a["ece"], b["ece"], rtol=1e-12)  # summation order differs
    order_a, order_b = np.argsort(a["true_idx"]), np.argsort(b["true_idx"])
    for key in ("true_depth", "pred_depth", "confidence", "correct"):
        np.testing.assert_array_equal(a[key][order_a], b[key][order_b])


def test_ece_by_hand():
    conf = np.array([0.05, 0.15, 0.15, 0.95, 0.95, 0.95, 0.95])
    correct = np.array([0, 1, 0, 1, 1, 1, 0], dtype=bool)
    # bin 0: conf .05, acc 0; bin 1: conf .15, acc .5; bin 9: conf .95, acc .75
    expected = (1 * 0.05 + 2 * 0.35 + 4 * 0.20) / 7
    assert ece(conf, correct) == pytest.approx(expected)
    curve = reliability_curve(conf, correct)
    np.testing.assert_array_equal(curve.count, [1, 2, 0, 0, 0, 0, 0, 0, 0, 4])
    assert ece([], []) == 0.0
    assert ece([1.0, 0.0], [True, False]) == 0.0  # edges fall in the last and first bins
    with pytest.raises(ValueError):
        ece([1.5], [True])


def test_confusion_matrix():
    cm = confusion_matrix([0, 1, 1, 2, 3], [1, 1, 2, 2, 0], K=3)
    expected = np.zeros((4, 4), int)
    for t, p in [(0, 1), (1, 1), (1, 2), (2, 2), (3, 0)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)
    with pytest.raises(ValueError):
        confusion_matrix([4], [0], K=3)


def test_aggregate_is_a_micro_average():
    pred, true = hand_made_case()
    one = column_metrics(pred, true, CUT_A)
    perfect = column_metrics({**true, "confidence": np.ones(10)}, true, CUT_A)
    agg = aggregate([one, perfect])
    assert (agg["tp"], agg["fp"], agg["fn"], agg["n_images"]) == (18, 2, 2, 2)
    assert agg["precision"] == pytest.approx(18 / 20)
    assert agg["exact"] == pytest.approx((5 + 10) / 18)
    assert agg["mae"] == pytest.approx(5 / 18)
    assert aggregate([one])["f1"] == pytest.approx(one["f1"])
    assert aggregate([agg, one])["n_images"] == 3
    empty = aggregate([])
    assert empty["tp"] == 0 and np.isnan(empty["precision"]) and empty["n_images"] == 0


def test_breakdown_by_parameter():
    pred, true = hand_made_case()
    one = column_metrics(pred, true, CUT_A)
    perfect = column_metrics({**true, "confidence": np.ones(10)}, true, CUT_A)
    dose = [10.0, 100.0, 1000.0, np.nan]
    rows = breakdown([one, perfect, perfect, one], dose, [0.0, 50.0, 1000.0, 2000.0])
    assert [(r["lo"], r["hi"], r["n_images"]) for r in rows] == [
        (0.0, 50.0, 1), (50.0, 1000.0, 1), (1000.0, 2000.0, 1)]
    assert rows[0]["exact"] == pytest.approx(5 / 8)
    assert rows[1]["exact"] == 1.0
    rows = breakdown([one, perfect], [1.0, 2.0], 2)  # equal-width bins, max in the last
    assert [r["n_images"] for r in rows] == [1, 1]
    with pytest.raises(ValueError):
        breakdown([one], [1.0, 2.0], 2)
