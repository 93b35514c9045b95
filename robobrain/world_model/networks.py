"""Building blocks: conv encoder / decoder, MLPs, and the pixel conversion in one place."""

from __future__ import annotations

import itertools

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
    if image_size < 16 or image_size & (image_size - 1):  # (0 was a "math domain error" in log2)
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    return image_size.bit_length() - 3


class MLP(nn.Sequential):
    """Linear -> LayerNorm -> SiLU, ``layers`` times, then a linear output layer."""

    def __init__(self, inp: int, out: int, hidden: int, layers: int = 1) -> None:
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(inp if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.SiLU()]
        mods.append(nn.Linear(hidden if layers else inp, out))
        super().__init__(*mods)


class SpatialSoftmax(nn.Module):
    """features [N, C, H, W] -> keypoints [N, 2K]: the expected (x, y) in [-1, 1] of a softmax over
    the H x W positions of each of K maps (a 1x1 conv makes them), with a learned temperature.

    The keypoint layer of deep visuomotor policies (Levine et al. 2016; robomimic's and LeRobot's
    image encoders): coordinates come out as numbers, so a block's position need not be relearned by a
    dense layer for every place it can be in the image."""

    def __init__(self, channels: int, keypoints: int) -> None:
        super().__init__()
        if keypoints <= 0:
            raise ValueError(f"keypoints must be > 0, got {keypoints}")
        self.maps = nn.Conv2d(channels, keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.maps(features)  # [N, K, H, W]
        h, w = logits.shape[-2:]
        prob = torch.softmax(logits.flatten(2) / self.log_temperature.exp(), dim=-1).unflatten(2, (h, w))
        ys = torch.linspace(-1.0, 1.0, h, device=features.device, dtype=prob.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=features.device, dtype=prob.dtype)
        x = (prob.sum(-2) * xs).sum(-1)  # [N, K]
        y = (prob.sum(-1) * ys).sum(-1)
        return torch.cat([x, y], -1)


class Encoder(nn.Module):
    """images float[N, 3, S, S] -> embedding [N, embed_dim]; stride-2 convs down to 4x4.

    With ``keypoints`` K > 0 the embedding also holds 2K spatial-softmax coordinates read from the
    S/4 x S/4 feature map (``SpatialSoftmax``), after the flattened 4x4 map."""

    def __init__(self, image_size: int, depth: int, keypoints: int = 0) -> None:
        super().__init__()
        n = num_conv_layers(image_size)
        chans = [3] + [depth * 2**i for i in range(n)]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(chans):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.GroupNorm(1, cout), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.keypoints = SpatialSoftmax(chans[2], keypoints) if keypoints else None
        self.embed_dim = chans[-1] * 16 + 2 * keypoints

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.keypoints is None:
            return self.net(images)
        low = self.net[:6](images)  # two stride-2 blocks (conv, norm, act each): the S/4 map
        return torch.cat([self.net[6:](low), self.keypoints(low)], -1)


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
        return self.to_image(self.hidden(feat))

    def hidden(self, feat: torch.Tensor) -> torch.Tensor:
        """features [N, F] -> the last feature map [N, depth, S/2, S/2] (before the output layer)."""
        return self.net[:-1](self.inp(feat).view(-1, self.top, 4, 4))

    def to_image(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net[-1](hidden)


class ReferenceRefiner(nn.Module):
    """(decoder feature map [N, depth, S/2, S/2], reference frame float[N, 3, S, S]) -> a frame.

    The reference is a real frame of the same episode (the last one observed). Its half-resolution
    conv features are added to the decoder's last feature map, and a transposed conv draws colours c
    and a mask m: ``m * c + (1 - m) * reference``, so what did not change (the table, the goal zone) is
    copied sharp from the reference and the latent's features draw what moved -- the compositing
    masks of video-prediction models (Finn et al. 2016, CDNA; SV2P). The world model trains it on the
    *detached* feature map, so it never changes what the latent learns to carry: given the reference
    in the decoder itself, the latent stopped carrying a block that did not move (bench/RESULTS.md).

    With ``layers`` > 0 the reference path gets a second (3x3) conv and the sum passes through
    ``layers`` 3x3 conv + SiLU blocks at half resolution before the output layer; 0 is the
    one-layer refiner of checkpoints saved before the option existed.
    """

    def __init__(self, depth: int, layers: int = 0) -> None:
        super().__init__()
        if layers < 0:
            raise ValueError(f"refiner layers must be >= 0, got {layers}")
        ref: list[nn.Module] = [nn.Conv2d(3, depth, 4, stride=2, padding=1), nn.SiLU()]
        mid: list[nn.Module] = []
        if layers:
            ref.append(nn.Conv2d(depth, depth, 3, padding=1))
            mid.append(nn.SiLU())
            for _ in range(layers):
                mid += [nn.Conv2d(depth, depth, 3, padding=1), nn.SiLU()]
        self.ref_net = nn.Sequential(*ref)
        self.mid = nn.Sequential(*mid)
        self.out = nn.ConvTranspose2d(depth, 4, 4, stride=2, padding=1)  # colours + mask logit

    def forward(self, hidden: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        out = self.out(self.mid(hidden + self.ref_net(reference)))
        mask = torch.sigmoid(out[:, 3:])
        return mask * out[:, :3] + (1 - mask) * reference


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


class ScalarHead(MLP):
    """features [..., F] -> a scalar prediction [..., 1]; :meth:`loss` trains it.

    ``bins=0``: a plain regression trained by squared error. ``bins > 0``: DreamerV3's discrete
    regression -- a softmax over ``bins`` values equally spaced in symlog space on [-limit, limit],
    trained by cross-entropy to the two-hot encoding of symlog(target); the prediction is symexp of the
    expected bin. It fits targets with jumps (a success bonus on top of dense distance terms), which a
    squared-error head smooths into the mean of its neighbours.
    """

    def __init__(self, inp: int, hidden: int, bins: int = 0, limit: float = 5.0) -> None:
        if bins == 1 or bins < 0:
            raise ValueError(f"bins must be 0 (regression) or >= 2, got {bins}")
        if bins and not 0 < limit <= 88:  # (symexp(88.7) overflows float32)
            raise ValueError(
                f"the two-hot bins span [-limit, limit] in symlog space: limit must be in (0, 88], "
                f"got {limit}"
            )
        super().__init__(inp, bins or 1, hidden, layers=2)
        self.num_bins, self.limit = bins, limit
        if bins:  # start at a prediction of 0 (uniform over symmetric bins), as DreamerV3 does
            nn.init.zeros_(self[-1].weight)
            nn.init.zeros_(self[-1].bias)

    def _bins(self, like: torch.Tensor) -> torch.Tensor:
        return torch.linspace(-self.limit, self.limit, self.num_bins, device=like.device, dtype=like.dtype)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        out = super().forward(feat)
        if not self.num_bins:
            return out
        out = out.float()
        return symexp((out.softmax(-1) * self._bins(out)).sum(-1, keepdim=True))

    def loss(self, feat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-element loss [...] of the predictions from ``feat`` [..., F] against ``target`` [...]."""
        out = super().forward(feat).float()
        target = target.float()
        if not self.num_bins:
            return (out.squeeze(-1) - target).square()
        bins = self._bins(out)
        y = symlog(target).clamp(-self.limit, self.limit)
        hi = torch.bucketize(y, bins).clamp(1, self.num_bins - 1)  # bins[hi - 1] <= y <= bins[hi]
        lo = hi - 1
        w_hi = (y - bins[lo]) / (bins[hi] - bins[lo])
        logp = out.log_softmax(-1)
        return -(
            (1 - w_hi) * logp.gather(-1, lo.unsqueeze(-1)).squeeze(-1)
            + w_hi * logp.gather(-1, hi.unsqueeze(-1)).squeeze(-1)
        )
