"""Building blocks: conv encoder / decoder, MLPs, and the pixel conversion in one place."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn


def pixels_to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-0.5, 0.5]. The only place this happens."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"pixels must be uint8, got {pixels.dtype}")
    return pixels.movedim(-1, -3).float() / 255.0 - 0.5


def float_to_pixels(images: torch.Tensor) -> torch.Tensor:
    """float [..., 3, H, W] in [-0.5, 0.5] -> uint8 [..., H, W, 3]."""
    return ((images.clamp(-0.5, 0.5) + 0.5) * 255.0).round().to(torch.uint8).movedim(-3, -1)


def num_conv_layers(image_size: int) -> int:
    """Stride-2 layers from ``image_size`` down to 4x4."""
    n = int(math.log2(image_size)) - 2
    if image_size < 16 or 2 ** (n + 2) != image_size:
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    return n


class MLP(nn.Sequential):
    """Linear -> LayerNorm -> SiLU, ``layers`` times, then a linear output layer."""

    def __init__(self, inp: int, out: int, hidden: int, layers: int = 1) -> None:
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(inp if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.SiLU()]
        mods.append(nn.Linear(hidden if layers else inp, out))
        super().__init__(*mods)


class Encoder(nn.Module):
    """images float[N, 3, S, S] -> embedding [N, embed_dim]; stride-2 convs down to 4x4."""

    def __init__(self, image_size: int, depth: int) -> None:
        super().__init__()
        n = num_conv_layers(image_size)
        chans = [3] + [depth * 2**i for i in range(n)]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(chans):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.GroupNorm(1, cout), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.embed_dim = chans[-1] * 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class Decoder(nn.Module):
    """features [N, F] -> images float[N, 3, S, S] in about [-0.5, 0.5]."""

    def __init__(self, feat_dim: int, image_size: int, depth: int) -> None:
        super().__init__()
        n = num_conv_layers(image_size)
        chans = [depth * 2**i for i in reversed(range(n))] + [3]
        self.top = chans[0]
        self.inp = nn.Linear(feat_dim, self.top * 16)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(itertools.pairwise(chans)):
            layers.append(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1))
            if i < n - 1:
                layers += [nn.GroupNorm(1, cout), nn.SiLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        x = self.inp(feat).view(-1, self.top, 4, 4)
        return self.net(x)
