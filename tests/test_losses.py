"""Weighted soft cross-entropy, soft targets, class weights, and a tiny overfit run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from atom3d.models.unet import UNet
from atom3d.training.losses import (
    class_weights_from_frequencies,
    soft_targets,
    weighted_soft_ce,
)

torch.set_num_threads(1)


def random_problem(seed: int, b: int = 2, c: int = 4, h: int = 6, w: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=g) * 2
    labels = torch.randint(0, c, (b, h, w), generator=g)
    return logits, labels


def one_hot(labels: torch.Tensor, c: int) -> torch.Tensor:
    return F.one_hot(labels, c).permute(0, 3, 1, 2).float()


# ------------------------------------------------------------------- soft targets


def test_soft_targets_mix_column_and_background() -> None:
    class_map = torch.tensor([[[0, 2], [3, 1]]])
    amp = torch.tensor([[[0.7, 1.0], [0.25, 0.0]]])
    target = soft_targets(class_map, amp, n_classes=4)
    assert target.shape == (1, 4, 2, 2)
    torch.testing.assert_close(target.sum(dim=1), torch.ones(1, 2, 2))
    torch.testing.assert_close(target[0, :, 0, 0], torch.tensor([1.0, 0, 0, 0]))  # background
    torch.testing.assert_close(target[0, :, 0, 1], torch.tensor([0.0, 0, 1, 0]))  # centre
    torch.testing.assert_close(target[0, :, 1, 0], torch.tensor([0.75, 0, 0, 0.25]))
    torch.testing.assert_close(target[0, :, 1, 1], torch.tensor([1.0, 0, 0, 0]))  # amp 0


@pytest.mark.parametrize(
    ("class_map", "amp"),
    [
        (torch.tensor([[[4]]]), torch.tensor([[[1.0]]])),  # class out of range
        (torch.tensor([[[1]]]), torch.tensor([[[1.5]]])),  # amp > 1
        (torch.tensor([[[1, 1]]]), torch.tensor([[[1.0]]])),  # shapes differ
    ],
)
def test_soft_targets_reject_bad_input(class_map: torch.Tensor, amp: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        soft_targets(class_map, amp, n_classes=4)


# --------------------------------------------------------------------------- loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_targets_and_unit_weights_equal_cross_entropy(seed: int) -> None:
    logits, labels = random_problem(seed)
    loss = weighted_soft_ce(logits, one_hot(labels, 4), torch.ones(labels.shape))
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    torch.testing.assert_close(
        weighted_soft_ce(logits, one_hot(labels, 4)), F.cross_entropy(logits, labels)
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_class_weights_match_torch_convention(seed: int) -> None:
    logits, labels = random_problem(seed)
    cw = torch.tensor([0.5, 1.0, 2.0, 4.0])
    loss = weighted_soft_ce(logits, one_hot(labels, 4), None, cw)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, weight=cw))


def test_zero_weight_pixels_do_not_contribute() -> None:
    logits, labels = random_problem(3)
    target = one_hot(labels, 4)
    weight = torch.ones(labels.shape)
    weight[:, :3] = 0
    loss = weighted_soft_ce(logits, target, weight)
    garbage = logits.clone()
    garbage[:, :, :3] = torch.randn_like(garbage[:, :, :3]) * 50  # only where weight is 0
    torch.testing.assert_close(weighted_soft_ce(garbage, target, weight), loss)
    expected = F.cross_entropy(logits[:, :, 3:], labels[:, 3:])
    torch.testing.assert_close(loss, expected)


def test_weights_scale_out() -> None:
    logits, labels = random_problem(4)
    target = one_hot(labels, 4)
    weight = torch.rand(labels.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        weighted_soft_ce(logits, target, weight), weighted_soft_ce(logits, target, 7.0 * weight)
    )


def test_all_zero_weight_gives_zero_loss_and_gradient() -> None:
    logits, labels = random_problem(5)
    logits.requires_grad_(True)
    loss = weighted_soft_ce(logits, one_hot(labels, 4), torch.zeros(labels.shape))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradients_are_finite_for_soft_targets_and_extreme_logits() -> None:
    logits, labels = random_problem(6)
    logits = (logits * 1e3).requires_grad_(True)  # saturated softmax
    amp = torch.rand(labels.shape, generator=torch.Generator().manual_seed(1))
    target = soft_targets(labels, amp, 4)
    cw = class_weights_from_frequencies([100.0, 10.0, 1.0, 0.0])
    loss = weighted_soft_ce(logits, target, 1 + 4 * amp, cw)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_class_weight_on_the_misclassified_class_raises_the_loss() -> None:
    # Class 1 pixels are predicted badly, class 0 pixels well.
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2] = 1
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 0] = 3.0  # everything predicted as class 0
    target = one_hot(labels, 2)
    plain = weighted_soft_ce(logits, target)
    up = weighted_soft_ce(logits, target, class_weights=torch.tensor([1.0, 3.0]))
    down = weighted_soft_ce(logits, target, class_weights=torch.tensor([3.0, 1.0]))
    assert down < plain < up
    # Pure class-1 loss is the limit of a huge class-1 weight.
    only_1 = weighted_soft_ce(logits, target, class_weights=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(only_1, F.softplus(torch.tensor(3.0)))


def test_loss_rejects_mismatched_shapes() -> None:
    logits, labels = random_problem(0)
    with pytest.raises(ValueError):
        weighted_soft_ce(logits, one_hot(labels, 4)[:, :3])
    with pytest.raises(ValueError):
        weighted_soft_ce(logits, one_hot(labels, 4), torch.ones(2, 6))
    with pytest.raises(ValueError):
        weighted_soft_ce(logits, one_hot(labels, 4), None, torch.ones(3))


# ------------------------------------------------------------------ class weights


def test_class_weights_from_frequencies() -> None:
    w = class_weights_from_frequencies(np.array([0.81, 0.09, 0.09, 0.01]), power=0.5)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))
    ratios = w / w[0]
    torch.testing.assert_close(ratios, torch.tensor([1.0, 3.0, 3.0, 9.0]))

    clipped = class_weights_from_frequencies(torch.tensor([1e6, 1.0, 0.0]), power=1.0, max_ratio=5)
    torch.testing.assert_close(clipped.mean(), torch.tensor(1.0))
    torch.testing.assert_close(clipped / clipped[0], torch.tensor([1.0, 5.0, 5.0]))

    torch.testing.assert_close(class_weights_from_frequencies([5, 1, 0], power=0), torch.ones(3))


@pytest.mark.parametrize("freq", [[0.0, 0.0], [1.0, -1.0], [np.nan, 1.0], []])
def test_class_weights_reject_bad_frequencies(freq: list[float]) -> None:
    with pytest.raises(ValueError):
        class_weights_from_frequencies(freq)


# ------------------------------------------------------------------------ overfit


def blob_batch(soft: bool, n: int = 4, size: int = 32, seed: int = 0):
    """Images of Gaussian "columns" on a lattice, brightness growing with depth.

    Ce columns (depth 0..3) sit on an 8 px lattice, O columns (depth 0..2, darker)
    between them; depth 0 means no column. Labels cover 1.5 px around each centre,
    with a soft rim (``amp`` down to 0.75) if ``soft``.
    Returns (images, (ce_target, o_target), pixel weights).
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.zeros(n, 1, size, size)
    targets = []
    weights = torch.ones(n, size, size)
    for offset, k_max, brightness in [(2, 3, 1.0), (6, 2, -0.6)]:  # Ce, O
        class_map = torch.zeros(n, size, size, dtype=torch.long)
        amp = torch.zeros(n, size, size)
        for b in range(n):
            for cy in range(offset, size, 8):
                for cx in range(offset, size, 8):
                    depth = int(torch.randint(0, k_max + 1, (1,), generator=g))
                    if depth == 0:
                        continue
                    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2).float()
                    images[b, 0] += brightness * depth * torch.exp(-r2 / (2 * 1.2**2))
                    rim = torch.exp(-r2 / 8) if soft else torch.ones_like(r2)
                    occupancy = torch.where(r2 <= 2.25, rim, 0.0)
                    class_map[b][occupancy > 0] = depth
                    amp[b] = torch.maximum(amp[b], occupancy)
                    weights[b] += 4 * occupancy
        targets.append(soft_targets(class_map, amp, k_max + 1))
    images += 0.05 * torch.randn(images.shape, generator=g)
    return images, tuple(targets), weights


@pytest.mark.parametrize("soft", [False, True])
def test_tiny_unet_overfits_blob_columns(soft: bool) -> None:
    """150 Adam steps: the excess loss falls > 5x and pixel accuracy exceeds 0.95.

    The excess loss is the loss minus that of a perfect predictor (the targets'
    weighted entropy), which is 0 for hard targets.
    """
    torch.manual_seed(0)
    images, targets, weights = blob_batch(soft)
    class_weights = [class_weights_from_frequencies(t.sum(dim=(0, 2, 3))) for t in targets]
    net = UNet(base_width=8, depth=2, n_classes=(4, 3), norm="batch")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)

    def total_loss(logits: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return sum(
            weighted_soft_ce(z, t, weights, cw)
            for z, t, cw in zip(logits, targets, class_weights, strict=True)
        )

    floor = total_loss(tuple(t.clamp_min(1e-30).log() for t in targets)).item()
    assert soft or floor < 1e-6
    first = None
    for _ in range(150):
        optimizer.zero_grad()
        loss = total_loss(net(images))
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()

    net.eval()
    with torch.no_grad():
        logits = net(images)
    final = total_loss(logits).item()
    assert (first - floor) / (final - floor) > 5, (first, final, floor)
    for z, t in zip(logits, targets, strict=True):
        accuracy = (z.argmax(1) == t.argmax(1)).float().mean().item()
        assert accuracy > 0.95
