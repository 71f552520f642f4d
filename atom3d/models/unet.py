"""U-Net that labels every pixel with a column depth, one head per species.

The network maps an HRTEM image ``(B, in_channels, H, W)`` to one logit map per
species: ``logits_ce (B, K_ce + 1, H, W)`` and ``logits_o (B, K_o + 1, H, W)``.
Class 0 is background; class ``k >= 1`` is a column of ``k`` atoms.

``H`` and ``W`` must be multiples of :attr:`UNet.size_multiple` (``2 ** depth``);
the inference tiler pads to that multiple.

Whatever the memory format of the weights (training converts them to ``channels_last``,
:data:`atom3d.training.task.TRAIN_MEMORY_FORMAT`), the logits returned are ordinary
contiguous NCHW tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Norm = Literal["batch", "group"]

#: Largest number of groups used by GroupNorm.
MAX_GROUPS = 8


def _n_groups(channels: int) -> int:
    """Largest divisor of ``channels`` that is at most :data:`MAX_GROUPS`."""
    return max(g for g in range(1, MAX_GROUPS + 1) if channels % g == 0)


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(_n_groups(channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


class ConvBlock(nn.Sequential):
    """Two ``3x3 conv -> norm -> ReLU`` layers, optionally followed by 2D dropout.

    Parameters
    ----------
    in_channels, out_channels : int
        Feature channels in and out.
    norm : {'batch', 'group'}
        Normalisation layer after each convolution.
    dropout : float
        Probability of :class:`torch.nn.Dropout2d` at the end of the block (0 = none).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: Norm, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [
                nn.Conv2d(c_in, out_channels, kernel_size=3, padding=1, bias=False),
                _norm(norm, out_channels),
                nn.ReLU(inplace=True),
            ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net with skip connections, bilinear upsampling and one 1x1 head per species.

    Encoder level ``i`` (``i = 0 .. depth``) has
    ``base_width * min(2 ** i, max_width_factor)`` channels; levels are separated by
    2x2 max pooling. The decoder upsamples bilinearly, concatenates the skip
    connection and applies a :class:`ConvBlock`. Two 1x1 convolutions give the
    per-species logits.

    ``base_width=32, depth=4`` (the default ``max_width_factor=4``) has about 2 M
    parameters (8 MB in float32).

    Parameters
    ----------
    in_channels : int
        Image channels (1 for an HRTEM intensity image).
    base_width : int
        Channels of the first (full-resolution) level.
    depth : int
        Number of 2x downsamplings. Input height and width must be multiples of
        ``2 ** depth`` (:attr:`size_multiple`).
    n_classes : sequence of int
        Classes per head, in species order ``(Ce, O)``: ``(K_ce + 1, K_o + 1)``
        where ``K`` is the largest column depth [atoms] of that species.
    norm : {'batch', 'group'}
        Normalisation layer. In eval mode BatchNorm is a fixed per-channel affine
        map, so a tiled prediction equals the whole-image prediction away from tile
        borders. GroupNorm normalises over the whole input, so its output depends on
        the tile size and content (vacuum versus particle); prefer it only when
        training batches are tiny.
    dropout : float
        :class:`torch.nn.Dropout2d` probability in the bottleneck (0 = none).
    max_width_factor : int
        Widths stop doubling at ``base_width * max_width_factor`` channels.

    Examples
    --------
    >>> net = UNet(base_width=8, depth=2, n_classes=(4, 3))
    >>> ce, o = net(torch.zeros(1, 1, 32, 32))
    >>> tuple(ce.shape), tuple(o.shape)
    ((1, 4, 32, 32), (1, 3, 32, 32))
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_width: int = 16,
        depth: int = 4,
        n_classes: Sequence[int] = (2, 2),
        norm: Norm = "batch",
        dropout: float = 0.0,
        max_width_factor: int = 4,
    ) -> None:
        super().__init__()
        if min(in_channels, base_width, depth, max_width_factor) < 1:
            raise ValueError("in_channels, base_width, depth and max_width_factor must be >= 1")
        if norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")
        if len(n_classes) < 1 or any(int(c) < 2 for c in n_classes):
            raise ValueError(f"every head needs >= 2 classes, got n_classes={tuple(n_classes)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = int(in_channels)
        self.base_width = int(base_width)
        self.depth = int(depth)
        self.n_classes = tuple(int(c) for c in n_classes)
        self.norm = norm
        self.dropout = float(dropout)
        self.max_width_factor = int(max_width_factor)

        widths = [base_width * min(2**i, max_width_factor) for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [ConvBlock(in_channels, widths[0], norm)]
            + [ConvBlock(widths[i - 1], widths[i], norm) for i in range(1, depth)]
        )
        self.bottleneck = ConvBlock(widths[depth - 1], widths[depth], norm, dropout)
        # decoder[j] takes level j + 1 up to level j (applied from j = depth - 1 down to 0)
        self.decoder = nn.ModuleList(
            [ConvBlock(widths[j + 1] + widths[j], widths[j], norm) for j in range(depth)]
        )
        self.heads = nn.ModuleList([nn.Conv2d(widths[0], c, kernel_size=1) for c in self.n_classes])

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this number of pixels."""
        return 2**self.depth

    @property
    def receptive_field_px(self) -> int:
        """Upper bound of the receptive field [px]: side of the square one output pixel sees.

        Sums every 3x3 convolution (2 px at its level's stride), and counts the 2x2
        pooling and the 2-tap bilinear upsampling as reaching one coarse pixel on
        *both* sides (their true offset depends on the pixel's parity), so the
        bound holds for every output pixel. With ``norm='batch'`` in eval mode an
        output pixel depends on no input outside this window; the *effective*
        receptive field is much smaller, so a tiling overlap of half this value
        on each side is ample. (With ``norm='group'`` every pixel depends on the
        whole input through the normalisation statistics.)
        """
        s = 2**self.depth
        convs = 4 * (s - 1) + 4 * s + 4 * (s - 1)  # encoder, bottleneck, decoder
        pooling = 2 * (s - 1)
        upsampling = 4 * (s - 1)
        return 1 + convs + pooling + upsampling

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict (inverse of :meth:`from_config`)."""
        return {
            "in_channels": self.in_channels,
            "base_width": self.base_width,
            "depth": self.depth,
            "n_classes": list(self.n_classes),
            "norm": self.norm,
            "dropout": self.dropout,
            "max_width_factor": self.max_width_factor,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UNet:
        """Build a freshly initialised network from :meth:`config` output.

        Raises
        ------
        TypeError
            On an unknown or missing key.
        """
        return cls(**config)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Per-species logits.

        Parameters
        ----------
        x : Tensor
            Normalised images ``(B, in_channels, H, W)``, H and W multiples of
            :attr:`size_multiple`.

        Returns
        -------
        tuple of Tensor
            ``(logits_ce (B, K_ce + 1, H, W), logits_o (B, K_o + 1, H, W))``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"height and width must be multiples of {m} (depth={self.depth}), "
                f"got {tuple(x.shape[-2:])}; pad the input"
            )
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for j in reversed(range(self.depth)):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = self.decoder[j](torch.cat([x, skips[j]], dim=1))
        return tuple(head(x).contiguous() for head in self.heads)
