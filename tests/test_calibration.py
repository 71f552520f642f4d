"""Temperature scaling and expected calibration error on synthetic distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atom3d.training.calibration import (
    expected_calibration_error,
    fit_pooled_temperature,
    fit_temperature,
    reliability_curve,
)

torch.set_num_threads(1)


def calibrated_set(n: int = 40_000, n_classes: int = 5, seed: int = 0):
    """Logits ``z`` and labels drawn from ``softmax(z)``: calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(n, n_classes, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=g).squeeze(1)
    return logits, labels


def confidence_and_correct(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    probabilities = torch.softmax(logits / temperature, dim=1)
    confidence, predicted = probabilities.max(dim=1)
    return confidence.numpy(), (predicted == labels).numpy()


def test_temperature_scaling_repairs_an_overconfident_model() -> None:
    logits, labels = calibrated_set()
    overconfident = 4.0 * logits
    temperature = fit_temperature(overconfident.float(), labels)
    assert temperature == pytest.approx(4.0, rel=0.15)

    ece_before = expected_calibration_error(*confidence_and_correct(overconfident, labels))
    ece_after = expected_calibration_error(
        *confidence_and_correct(overconfident, labels, temperature)
    )
    assert ece_after < ece_before
    assert ece_after < 0.02
    assert ece_before > 0.1


def test_calibrated_model_keeps_temperature_one_and_small_ece() -> None:
    logits, labels = calibrated_set(seed=1)
    assert fit_temperature(logits.numpy(), labels.numpy()) == pytest.approx(1.0, rel=0.05)
    assert expected_calibration_error(*confidence_and_correct(logits, labels)) < 0.015


def test_underconfident_model_gets_temperature_below_one() -> None:
    logits, labels = calibrated_set(n=10_000, seed=2)
    assert fit_temperature(0.5 * logits, labels) == pytest.approx(0.5, rel=0.15)


def test_separable_set_gives_the_lower_bound() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [3.0, 1.0]])
    labels = torch.tensor([0, 1, 0])  # every prediction right: NLL falls as T -> 0
    temperature = fit_temperature(logits, labels, bounds=(0.1, 10.0))
    assert 0.1 <= temperature < 0.2
    assert fit_temperature(logits, labels, bounds=(0.5, 10.0)) == 0.5


def test_ece_by_hand() -> None:
    # bin (0.6, 0.7]: confidences 0.65, 0.65, accuracy 0.5 -> gap 0.15
    # bin (0.9, 1.0]: confidences 0.95, 1.0, accuracy 1.0 -> gap 0.025
    confidence = np.array([0.65, 0.65, 0.95, 1.0])
    correct = np.array([True, False, True, True])
    ece = expected_calibration_error(confidence, correct, n_bins=10)
    assert ece == pytest.approx(0.5 * 0.15 + 0.5 * 0.025)
    assert expected_calibration_error(np.array([]), np.array([], dtype=bool)) == 0.0


def test_reliability_curve_bins() -> None:
    confidence = np.array([0.0, 0.05, 0.1, 0.15, 0.55, 1.0])
    correct = np.array([False, True, False, True, True, True])
    curve = reliability_curve(confidence, correct, n_bins=4)
    np.testing.assert_allclose(curve.bin_edges, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(curve.count, [4, 0, 1, 1])
    np.testing.assert_allclose(curve.confidence[[0, 2, 3]], [0.075, 0.55, 1.0])
    np.testing.assert_allclose(curve.accuracy[[0, 2, 3]], [0.5, 1.0, 1.0])
    assert np.isnan(curve.confidence[1]) and np.isnan(curve.accuracy[1])
    # torch input gives the same answer
    torch_curve = reliability_curve(torch.tensor(confidence), torch.tensor(correct), n_bins=4)
    np.testing.assert_array_equal(torch_curve.count, curve.count)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([1.2]), np.array([True]))
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([0.5, 0.5]), np.array([True]))
    with pytest.raises(ValueError):
        fit_temperature(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))


def _pooled_set(n: int = 6000, m: int = 9, n_classes: int = 6, seed: int = 3):
    """Pixel logits of n items (m pixels each), weights, and labels drawn from the
    weighted mean of the pixels' softmax: calibrated at the item level by construction."""
    rng = np.random.default_rng(seed)
    centre = 2.0 * rng.standard_normal((n, 1, n_classes))
    logits = centre + 0.8 * rng.standard_normal((n, m, n_classes))
    weights = rng.uniform(0.1, 1.0, (n, m))
    p = np.exp(logits - logits.max(axis=2, keepdims=True))
    p /= p.sum(axis=2, keepdims=True)
    q = (weights[..., None] * p).sum(axis=1) / weights.sum(axis=1)[:, None]
    labels = np.array([rng.choice(n_classes, p=row) for row in q])
    return logits, weights, labels


def test_pooled_temperature_is_one_on_a_pooled_calibrated_set_and_repairs_overconfidence():
    logits, weights, labels = _pooled_set()
    assert fit_pooled_temperature(logits, weights, labels) == pytest.approx(1.0, abs=0.1)
    assert fit_pooled_temperature(2.5 * logits, weights, labels) == pytest.approx(2.5, rel=0.1)
    # one pixel per item: the same answer as the plain temperature fit
    single = logits[:, :1]
    plain = fit_temperature(torch.as_tensor(3.0 * single[:, 0]), torch.as_tensor(labels))
    pooled = fit_pooled_temperature(3.0 * single, weights[:, :1], labels)
    assert pooled == pytest.approx(plain, rel=0.01)


def test_pooled_temperature_rejects_bad_input():
    logits, weights, labels = _pooled_set(n=10)
    with pytest.raises(ValueError, match="logits"):
        fit_pooled_temperature(logits[:, 0], weights, labels)
    with pytest.raises(ValueError, match="weight"):
        fit_pooled_temperature(logits, np.zeros_like(weights), labels)
    with pytest.raises(ValueError, match="labels"):
        fit_pooled_temperature(logits, weights, labels + 10)


def test_confidence_map_calibrates_an_overconfident_middle():
    from atom3d.training.calibration import expected_calibration_error, fit_confidence_map

    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.2, 1.0, 20_000)
    # right at both ends, over-confident in the middle: no temperature fixes this shape
    accuracy = np.where((confidence > 0.5) & (confidence < 0.9), confidence - 0.2, confidence)
    correct = rng.uniform(size=confidence.size) < accuracy
    knots = fit_confidence_map(confidence, correct, max_knots=32)
    x, y = np.array(knots["confidence"]), np.array(knots["accuracy"])
    assert len(x) <= 32 and np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0)
    before = expected_calibration_error(confidence, correct)
    mapped = np.interp(confidence, x, y)
    assert before > 0.05 and expected_calibration_error(mapped, correct) < 0.02
    # fresh data from the same law: still calibrated (no overfitting)
    fresh = rng.uniform(0.2, 1.0, 20_000)
    truth = np.where((fresh > 0.5) & (fresh < 0.9), fresh - 0.2, fresh)
    ok = rng.uniform(size=fresh.size) < truth
    assert expected_calibration_error(np.interp(fresh, x, y), ok) < 0.02
    with pytest.raises(ValueError):
        fit_confidence_map([], [])


def _tiny_net():
    """A seeded random UNet (5 depth classes per species) and the save_artifact arguments
    that go with it."""
    from atom3d.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(base_width=8, depth=2, n_classes=(6, 6))
    return net, dict(name="m", classes={"Ce": 5, "O": 5}, pixel_size_A=0.2,
                     normalization={}, training_domain={})


def _dotted_frame() -> np.ndarray:
    """A 96 px Poisson frame with bright dots every 8 px: columns for a random network."""
    rng = np.random.default_rng(0)
    frame = rng.poisson(50.0, (96, 96)).astype(np.float32)
    frame[::8, ::8] += 200.0
    return frame


def test_artifact_confidence_map_is_stored_validated_and_applied(tmp_path):
    from atom3d.inference.predictor import Predictor
    from atom3d.models.artifact import load_artifact, save_artifact

    net, common = _tiny_net()
    flat = {"confidence": [0.0, 1.0], "accuracy": [0.5, 0.5]}
    save_artifact(net, tmp_path / "m", confidence_map={"Ce": flat}, **common)
    artifact = load_artifact(tmp_path / "m")
    np.testing.assert_allclose(artifact.map_confidence("Ce", [0.1, 0.9]), [0.5, 0.5])
    np.testing.assert_allclose(artifact.map_confidence("O", [0.1, 0.9]), [0.1, 0.9])
    frame = _dotted_frame()
    pred = Predictor(artifact).predict(frame, 0.2)
    assert len(pred.columns["Ce"]) > 0
    np.testing.assert_allclose(pred.columns["Ce"].confidence, 0.5)
    for bad in ({"Ce": {"confidence": [0.5, 0.2], "accuracy": [0.1, 0.2]}},
                {"Ce": {"confidence": [0.2], "accuracy": [1.5]}},
                {"Xe": flat}):
        with pytest.raises(ValueError):
            save_artifact(net, tmp_path / "bad", confidence_map=bad, **common)


def test_column_threshold_maximises_f1_with_known_answer():
    from atom3d.training.calibration import fit_column_threshold

    # 10 true columns: 8 found with high presence, 6 false ones at 0.55-0.60, 2 missed
    p = np.r_[np.full(8, 0.9), [0.55, 0.56, 0.57, 0.58, 0.59, 0.60]]
    matched = np.r_[np.ones(8, bool), np.zeros(6, bool)]
    fit = fit_column_threshold(p, matched, n_true=10)
    assert fit["threshold"] == pytest.approx(0.61)  # the smallest cut dropping every false one
    assert fit["f1"] == pytest.approx(2 * 8 / (2 * 8 + 0 + 2))
    assert fit["f1_lowest"] == pytest.approx(2 * 8 / (2 * 8 + 6 + 2))
    # nothing to gain: the smallest candidate wins
    assert fit_column_threshold(np.full(5, 0.7), np.ones(5, bool), 5)["threshold"] == 0.5
    # a true column with low presence is worth more than one false one below it
    fit = fit_column_threshold([0.9, 0.6, 0.55], [True, True, False], 2)
    assert fit["threshold"] == pytest.approx(0.56)
    with pytest.raises(ValueError):
        fit_column_threshold([0.9], [True, True], 2)
    with pytest.raises(ValueError):
        fit_column_threshold([0.9, 0.8], [True, True], 1)


def test_artifact_column_threshold_is_stored_validated_and_applied(tmp_path):
    from atom3d.inference.predictor import Predictor
    from atom3d.models.artifact import load_artifact, save_artifact

    net, common = _tiny_net()
    frame = _dotted_frame()
    save_artifact(net, tmp_path / "plain", **common)
    plain = load_artifact(tmp_path / "plain")
    assert plain.column_threshold == {"Ce": 0.0, "O": 0.0}
    ce = Predictor(plain).predict(frame, 0.2).columns["Ce"]
    assert len(ce) > 2
    cut = float(np.median(ce.p_column))
    save_artifact(net, tmp_path / "cut", column_threshold={"Ce": cut}, **common)
    artifact = load_artifact(tmp_path / "cut")
    assert artifact.column_threshold == {"Ce": cut, "O": 0.0}
    pred = Predictor(artifact).predict(frame, 0.2)
    kept = ce.p_column >= cut
    assert 0 < len(pred.columns["Ce"]) == kept.sum() < len(ce)
    np.testing.assert_array_equal(pred.columns["Ce"].x_A, ce.x_A[kept])
    np.testing.assert_array_equal(pred.columns["Ce"].depth, ce.depth[kept])
    for bad in ({"Ce": 1.0}, {"Ce": -0.1}, {"Xe": 0.5}):
        with pytest.raises(ValueError):
            save_artifact(net, tmp_path / "bad", column_threshold=bad, **common)


def test_pass_calibration_is_stored_validated_and_chosen_by_the_number_of_passes(tmp_path):
    import json

    from atom3d.errors import UserError
    from atom3d.inference.predictor import Predictor
    from atom3d.models.artifact import load_artifact, save_artifact, save_pass_calibration

    net, common = _tiny_net()
    flat = {"confidence": [0.0, 1.0], "accuracy": [0.5, 0.5]}
    save_artifact(net, tmp_path / "m", temperature={"Ce": 1.1, "O": 1.2},
                  confidence_map={"Ce": flat}, column_threshold={"Ce": 0.6}, **common)
    one = load_artifact(tmp_path / "m")
    entry = {"temperature": {"Ce": 0.7, "O": 0.8}, "column_threshold": {"Ce": 0.3},
             "fit": {"passes": 8}}
    save_pass_calibration(one, tmp_path / "m8", 8, entry)
    art = load_artifact(tmp_path / "m8")
    assert art.weights_sha256 == one.weights_sha256
    assert (tmp_path / "m8" / "model.safetensors").read_bytes() == \
        (tmp_path / "m" / "model.safetensors").read_bytes()
    # one pass (and 4, which has no entry) keep the top-level calibration
    for passes in (1, 4):
        view = art.for_passes(passes)
        assert view is art and view.calibration_passes == 1
        assert view.temperature == {"Ce": 1.1, "O": 1.2}
    eight = art.for_passes(8)
    assert eight.calibration_passes == 8 and eight.model is art.model
    assert eight.temperature == {"Ce": 0.7, "O": 0.8}
    assert eight.column_threshold == {"Ce": 0.3, "O": 0.0}
    # the one-pass confidence map does not carry over to 8 passes
    np.testing.assert_allclose(eight.map_confidence("Ce", [0.2, 0.9]), [0.2, 0.9])
    np.testing.assert_allclose(art.map_confidence("Ce", [0.2, 0.9]), [0.5, 0.5])
    assert Predictor(art, tta=8).artifact.temperature == {"Ce": 0.7, "O": 0.8}
    assert Predictor(art, tta=1).artifact.temperature == {"Ce": 1.1, "O": 1.2}
    frame = _dotted_frame()
    ce8 = Predictor(art, tta=8).predict(frame, 0.2).columns["Ce"]
    ce8_top = Predictor(one, tta=8).predict(frame, 0.2).columns["Ce"]
    assert len(ce8) > 0 and np.all(ce8.p_column >= 0.3)
    assert not np.allclose(ce8.confidence[:3], 0.5)  # no map: not the flat one-pass map
    np.testing.assert_allclose(ce8_top.confidence[ce8_top.p_column >= 0.6], 0.5)
    # a second entry keeps the first; writing into the artifact's own directory works
    save_pass_calibration(art, tmp_path / "m8", 4, {"temperature": {"Ce": 0.9, "O": 0.9}})
    both = load_artifact(tmp_path / "m8")
    assert sorted(both.config["pass_calibration"]) == ["4", "8"]
    assert both.for_passes(4).temperature == {"Ce": 0.9, "O": 0.9}
    # malformed entries are refused when saving and when loading
    for bad_passes, bad in ((3, entry), (8, {"temperature": {"Ce": -1.0, "O": 1.0}}),
                            (8, {"column_threshold": {"Ce": 0.3}})):
        with pytest.raises(ValueError):
            save_pass_calibration(one, tmp_path / "bad", bad_passes, bad)
    config = json.loads((tmp_path / "m8" / "config.json").read_text())
    config["pass_calibration"]["8"]["temperature"] = {"Ce": 0.0, "O": 1.0}
    (tmp_path / "m8" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="calibration"):
        load_artifact(tmp_path / "m8")


def test_tta_forward_is_the_bare_network_for_one_pass_and_the_predictors_mean_for_eight():
    from atom3d.inference.predictor import TTA_TRANSFORMS, TTANetwork, tta_forward
    from atom3d.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(base_width=8, depth=2, n_classes=(4, 4)).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        bare = net(x)
        for a, b in zip(tta_forward(net, x, 1), bare, strict=True):
            assert torch.equal(a, b)
        # mean over the 8 orientations, each brought back, computed here by hand
        manual = [torch.zeros_like(z) for z in bare]
        for transpose, dims in TTA_TRANSFORMS:
            xt = x.transpose(-2, -1) if transpose else x
            out = net(torch.flip(xt, dims) if dims else xt)
            for m, z in zip(manual, out, strict=True):
                z = torch.flip(z, dims) if dims else z
                m += (z.transpose(-2, -1) if transpose else z) / 8
        wrapped = TTANetwork(net, 8)(x)
        for a, b in zip(wrapped, manual, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(wrapped[0], bare[0], atol=1e-3)


def _random_map(rng, n):
    x = np.sort(rng.uniform(0, 1, n))
    y = np.sort(rng.uniform(0, 1, n))
    y[rng.integers(0, n)] = y[max(0, rng.integers(0, n) - 1)]  # flat stretches happen
    return {"confidence": x.tolist(), "accuracy": np.sort(y).tolist()}


@pytest.mark.parametrize("seed", range(5))
def test_compose_confidence_maps_is_the_composition(seed):
    from atom3d.training.calibration import compose_confidence_maps

    rng = np.random.default_rng(seed)
    inner, outer = _random_map(rng, 12), _random_map(rng, 9)
    knots = compose_confidence_maps(inner, outer)
    assert np.all(np.diff(knots["confidence"]) >= 0) and np.all(np.diff(knots["accuracy"]) >= 0)
    c = np.linspace(-0.2, 1.2, 200_001)
    want = np.interp(np.interp(c, inner["confidence"], inner["accuracy"]),
                     outer["confidence"], outer["accuracy"])
    np.testing.assert_allclose(np.interp(c, knots["confidence"], knots["accuracy"]), want,
                               atol=1e-12)
    assert compose_confidence_maps(None, outer) == outer  # no map yet: the new one
