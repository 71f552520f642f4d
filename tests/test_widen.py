"""Net2WiderNet: a wider U-Net started from a narrow one computes the same output."""
import pytest
import torch

from atom3d.models.unet import UNet
from atom3d.models.widen import widen_state_dict


@pytest.mark.parametrize("wide", [{"base_width": 7}, {"base_width": 4, "max_width_factor": 8},
                                  {"base_width": 9, "max_width_factor": 8}])
def test_widened_network_computes_the_narrow_ones_output(wide):
    torch.manual_seed(0)
    old = UNet(base_width=4, depth=3, n_classes=(5, 4), max_width_factor=4)
    # trained-looking BatchNorm statistics, so the copy of the running stats is checked
    old.train()
    for _ in range(3):
        old(torch.randn(4, 1, 32, 32) * 2 + 1)
    old.eval()
    new = UNet(depth=3, n_classes=(5, 4), **wide).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = old(x)
        new.load_state_dict(widen_state_dict(old.state_dict(), new.state_dict(), noise=0.0))
        exact = new(x)
        new.load_state_dict(widen_state_dict(old.state_dict(), new.state_dict(), noise=0.01))
        noisy = new(x)
    for a, b, c in zip(ref, exact, noisy, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
        diff = float((a - c).abs().max())
        assert 0 < diff < 0.1 * float(a.abs().max())  # the copies start apart, a little
    # the copies are not all alike: training can tell them apart
    w = new.encoder[0][0].weight
    assert len({tuple(row.flatten().tolist()) for row in w}) == w.shape[0]


def test_widening_refuses_what_it_cannot_do():
    small = UNet(base_width=4, depth=2, n_classes=(3, 3))
    with pytest.raises(ValueError, match="narrow"):
        widen_state_dict(UNet(base_width=6, depth=2, n_classes=(3, 3)).state_dict(), small.state_dict())
    with pytest.raises(ValueError, match="depth"):
        widen_state_dict(small.state_dict(), UNet(base_width=6, depth=3, n_classes=(3, 3)).state_dict())
    with pytest.raises(ValueError):
        widen_state_dict(small.state_dict(), UNet(base_width=6, depth=2, n_classes=(4, 3)).state_dict())
    with pytest.raises(ValueError, match="BatchNorm"):
        widen_state_dict(UNet(base_width=4, depth=2, n_classes=(3, 3), norm="group").state_dict(),
                         UNet(base_width=8, depth=2, n_classes=(3, 3), norm="group").state_dict())
