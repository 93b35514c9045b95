"""Temporally correlated ("coloured") exploration noise.

Power-law noise has a power spectrum proportional to 1 / f^beta: beta = 0 is white noise (independent
steps), 1 pink, 2 red (Brownian-like). Eberhard et al. (ICLR 2023, "Pink Noise Is All You Need")
found pink action noise a better default than white or Ornstein-Uhlenbeck noise for exploration:
its low frequencies move the robot consistently for many steps, so it covers more of the workspace.
Sequences are drawn in the frequency domain (random Gaussian amplitudes and phases scaled by
f^(-beta/2), as Timmer & Koenig 1995) and normalised to zero mean and unit variance each.
"""

from __future__ import annotations

import torch


def powerlaw_noise(
    beta: float,
    batch: int,
    length: int,
    dim: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``batch`` independent sequences of ``length`` steps in ``dim`` dimensions: [batch, length, dim],
    each dimension of each sequence with mean 0 and standard deviation 1 over its steps."""
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    freqs = torch.fft.rfftfreq(length, device=device)
    freqs[0] = freqs[1]  # the lowest frequency the sequence resolves; the mean is removed below
    # freqs ** (-beta / 2) over its largest (the normalisation below takes any common factor out): <= 1,
    # so a large |beta| underflows some frequencies to 0 instead of overflowing others to inf.
    exponent = (-beta / 2.0) * freqs.log()
    scale = (exponent - exponent.max()).exp()
    shape = (batch, dim, freqs.numel())
    real = torch.randn(shape, generator=generator, device=device) * scale
    imag = torch.randn(shape, generator=generator, device=device) * scale
    x = torch.fft.irfft(torch.complex(real, imag), n=length)  # [batch, dim, length]
    x = x - x.mean(-1, keepdim=True)
    x = x / x.std(-1, keepdim=True).clamp(min=1e-8)
    return x.transpose(1, 2).contiguous()
