"""Sampling-based trajectory optimizers: CEM and MPPI.

They know nothing about models. ``score_fn(actions[B, N, H, A]) -> returns[B, N]`` scores N candidate
action sequences for each of B independent problems (B environments planned for in one call).
Every output lies inside the action bounds; NaN or inf scores never win; sampling is seeded through
a ``torch.Generator``; an anytime budget stops after ``iterations`` or ``time_budget`` seconds,
whichever comes first (at least one iteration always runs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

_F32_MAX = float(torch.finfo(torch.float32).max)


def _f32(x: float) -> float:
    """``x`` as the search's float32 holds it (1e-46 is 0 there, 1e39 inf)."""
    return torch.tensor(x, dtype=torch.float32).item()


ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class OptimizerConfig:
    """Shared by CEM and MPPI."""

    num_samples: int = 512
    """Candidates N per problem and iteration."""
    num_elites: int | None = None
    """Top candidates the distribution is refitted to (MPPI: weighted by temperature); None: an
    eighth of ``num_samples``, at least 1 (TD-MPC2's 64 of 512), so that fewer samples need no
    second flag."""
    iterations: int = 6
    """Refits per call, at most."""
    time_budget: float | None = None
    """Wall-clock seconds per call (None: no limit): no iteration starts once they are spent, so a
    call overruns them by at most the iteration that spent them."""
    init_std: float = 0.5
    """Sampling std at the first iteration."""
    min_std: float = 0.05
    """Floor on the sampling std."""
    momentum: float = 0.1
    """Share of the previous mean/std kept at each refit."""
    temperature: float = 0.5
    """MPPI: softmax temperature over elite scores (lower = greedier): weights ``exp(score /
    temperature)``; TD-MPC2's code multiplies by its ``temperature`` instead, so its 0.5 is 2 here."""
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:  # when the flags are read, not at the first plan
        checks = [
            (self.num_samples >= 2, "num_samples >= 2 (candidate 0 is the mean: alone it never moves)"),
            (0 < self.elites <= self.num_samples, "0 < num_elites <= num_samples"),
            (self.iterations >= 1, "iterations >= 1 (at least one always runs)"),
            (self.time_budget is None or self.time_budget >= 0, "time_budget >= 0 or None"),
            # (the search runs in float32: a value it rounds to 0 or inf is refused here, not met as
            # NaN weights or an overflow at the first plan)
            (
                0 < self.init_std < _F32_MAX,
                "0 < init_std < float32's max (0 never moves the mean; inf clamps every sample)",
            ),
            (0 <= self.min_std < _F32_MAX, "0 <= min_std < float32's max"),
            (0 < _f32(self.temperature) < math.inf, "0 < temperature < inf in float32 (read by MPPI)"),
            (0 <= self.momentum < 1, "0 <= momentum < 1 (1 keeps the initial mean, > 1 moves away)"),
            (-_F32_MAX < self.low < self.high < _F32_MAX, "finite low < high"),
        ]
        for ok, need in checks:
            if not ok:  # (NaN fails every one of them)
                raise ValueError(f"the optimizer needs {need}, got {self}")

    @property
    def elites(self) -> int:
        """``num_elites``, or for None an eighth of ``num_samples`` (at least 1)."""
        return max(1, self.num_samples // 8) if self.num_elites is None else self.num_elites


class PlanResult(NamedTuple):
    """best: [B, H, A] the plan to execute; mean, std: [B, H, A] the final sampling distribution;
    score: [B] the best candidate score seen (-inf when none scored finitely) -- for CEM the score of
    ``best``; MPPI's plan is the weighted mean, which is not re-scored; iterations run."""

    best: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    score: torch.Tensor
    iterations: int


def _clean(scores: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    if scores.shape != shape:
        raise ValueError(f"score_fn must return [B, N] = {list(shape)}, got {list(scores.shape)}")
    finite = torch.isfinite(scores)
    if scores.dtype == torch.float64:  # (beyond float32's range: its largest, not inf, which never wins)
        scores = scores.clamp(-_F32_MAX, _F32_MAX)
    scores = scores.float()
    return torch.where(finite, scores, torch.full_like(scores, -torch.inf))


def check_finite_mean(init_mean: torch.Tensor) -> None:
    """Refuse a NaN or inf ``init_mean``: clamping keeps NaN, so it would come back as the plan."""
    if not torch.isfinite(init_mean).all():
        raise ValueError("init_mean holds NaN or inf (a diverged warm start or prior policy?)")


class _SamplingOptimizer:
    def __init__(
        self, config: OptimizerConfig | None = None, generator: torch.Generator | None = None
    ) -> None:
        self.cfg = config or OptimizerConfig()  # (checked when it was made)
        self.generator = generator

    def optimize(
        self, score_fn: ScoreFn, init_mean: torch.Tensor, prior_samples: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The best plan [B, H, A] for each of the B problems."""
        return self.plan(score_fn, init_mean, prior_samples=prior_samples).best

    def plan(
        self,
        score_fn: ScoreFn,
        init_mean: torch.Tensor,
        init_std: torch.Tensor | float | None = None,
        prior_samples: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> PlanResult:
        """Optimize from ``init_mean`` [B, H, A] (``init_std``: a scalar or [B, H, A]; default
        ``cfg.init_std``); ``prior_samples`` [B, P, H, A] (e.g. from a policy)
        join every iteration's candidates. ``noise`` [iterations, B, N, H, A]: standard-normal draws
        to sample the candidates with instead of drawing them from the generator (a CUDA graph that
        records this call reads its noise from a buffer filled before each replay)."""
        cfg = self.cfg
        init_mean = torch.as_tensor(init_mean)  # (numpy too)
        if init_mean.ndim != 3:
            raise ValueError(f"init_mean must be [B, H, A], got {list(init_mean.shape)}")
        std_shape = None if init_std is None else list(torch.as_tensor(init_std).shape)
        if std_shape is not None and len(std_shape) not in (0, 3):
            # (a [B] std meant per problem was applied per action dimension when B == A)
            raise ValueError(f"init_std must be a scalar or [B, H, A], got {std_shape}")
        # (Not while a CUDA graph records this call: the check reads the tensor back to the host;
        # GraphedPlan checks its input before every replay instead.)
        if not (init_mean.is_cuda and torch.cuda.is_current_stream_capturing()):
            check_finite_mean(init_mean)
        b, n = init_mean.shape[0], cfg.num_samples
        mean = init_mean.float().clamp(cfg.low, cfg.high)
        std = (
            torch.full_like(mean, cfg.init_std)
            if init_std is None
            else torch.as_tensor(init_std, dtype=torch.float32, device=mean.device).expand_as(mean)
        )
        std = std.float().clone()
        if prior_samples is not None:
            if (
                prior_samples.ndim != 4
                or prior_samples.shape[0] != b
                or prior_samples.shape[2:] != mean.shape[1:]
            ):
                raise ValueError(f"prior_samples must be [B, P, H, A], got {list(prior_samples.shape)}")
            if not torch.isfinite(prior_samples).all():
                raise ValueError("prior_samples hold NaN or inf (a diverged prior policy?)")
            prior_samples = prior_samples.float().clamp(cfg.low, cfg.high)
        if noise is not None and noise.shape != (cfg.iterations, b, n, *mean.shape[1:]):
            raise ValueError(
                f"noise must be [iterations, B, N, H, A] = {[cfg.iterations, b, n, *mean.shape[1:]]}, "
                f"got {list(noise.shape)}"
            )
        best = mean.clone()
        best_score = torch.full((b,), -torch.inf, device=mean.device)
        start = time.perf_counter()
        it = 0
        while it < cfg.iterations:
            eps = (
                torch.randn((b, n, *mean.shape[1:]), generator=self.generator, device=mean.device)
                if noise is None
                else noise[it]
            )
            samples = (mean.unsqueeze(1) + std.unsqueeze(1) * eps).clamp(cfg.low, cfg.high)
            samples[:, 0] = mean  # the current mean always competes
            if prior_samples is not None:
                p = min(prior_samples.shape[1], n - 1)
                samples[:, 1 : 1 + p] = prior_samples[:, :p]
            scores = _clean(score_fn(samples), (b, n))
            top_score, top_idx = scores.max(1)
            better = top_score > best_score
            # Gather + where rather than boolean indexing: nothing here waits for a GPU.
            top = samples.gather(1, top_idx.view(b, 1, 1, 1).expand(b, 1, *samples.shape[2:])).squeeze(1)
            best = torch.where(better[:, None, None], top, best)
            best_score = torch.where(better, top_score, best_score)
            mean, std = self._refit(samples, scores, mean, std)
            it += 1
            if cfg.time_budget is not None:
                if mean.is_cuda:  # the clock must see the GPU's work done, not its kernels launched
                    torch.cuda.synchronize(mean.device)
                if time.perf_counter() - start >= cfg.time_budget:
                    break
        return PlanResult(self._result(best, mean, best_score), mean, std, best_score, it)

    def _result(self, best: torch.Tensor, mean: torch.Tensor, best_score: torch.Tensor) -> torch.Tensor:
        return best

    def _refit(
        self, samples: torch.Tensor, scores: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refit mean/std [B, H, A] to the elites, weighted by ``_weights``; momentum; std floor.
        Problems whose elites all scored non-finite keep their distribution."""
        cfg = self.cfg
        elites, top = _elites(samples, scores, cfg.elites)
        valid = torch.isfinite(top)  # [B, k]
        elites = torch.where(valid[..., None, None], elites, torch.zeros_like(elites))  # 0 * NaN is NaN
        w = self._weights(top, valid)[..., None, None]
        new_mean = (w * elites).sum(1)
        new_std = ((w * (elites - new_mean.unsqueeze(1)) ** 2).sum(1)).sqrt()
        has = valid.any(1)[:, None, None]
        new_mean = torch.where(has, new_mean, mean)
        new_std = torch.where(has, new_std, std)
        m = cfg.momentum
        # (Clamped again: the weighted average of in-bounds samples can round one float32 step out,
        # and the mean is candidate 0 of the next iteration, so it could come back as the plan.)
        new_mean = (m * mean + (1 - m) * new_mean).clamp(cfg.low, cfg.high)
        return new_mean, (m * std + (1 - m) * new_std).clamp(min=cfg.min_std)

    def _weights(self, top: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Elite weights [B, k] (summing to 1 where any elite is valid) from sorted scores [B, k]."""
        raise NotImplementedError


def _elites(samples: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k samples [B, k, H, A] and their scores [B, k]."""
    top_scores, idx = scores.topk(k, dim=1)
    return samples.gather(1, idx[..., None, None].expand(-1, -1, *samples.shape[2:])), top_scores


class CEM(_SamplingOptimizer):
    """Cross-entropy method: refit a diagonal Gaussian to the top ``num_elites`` candidates, equally
    weighted. Returns the best candidate seen (PlaNet, Visual Foresight style)."""

    def _weights(self, top: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return valid.float() / valid.float().sum(1, keepdim=True).clamp(min=1)


class MPPI(_SamplingOptimizer):
    """Model-predictive path integral (TD-MPC2 style): elites weighted by
    ``exp((score - max) / temperature)``; the plan is the final weighted mean."""

    def __init__(
        self, config: OptimizerConfig | None = None, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(config, generator)
        if not self.cfg.temperature > 0:  # 0 gave an all-zero plan, < 0 favoured the worst elites
            raise ValueError(f"MPPI needs temperature > 0, got {self.cfg.temperature}")

    def _weights(self, top: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        shifted = torch.where(valid, top - top[:, :1], torch.full_like(top, -torch.inf))
        return torch.nan_to_num(torch.softmax(shifted / self.cfg.temperature, dim=1), nan=0.0)

    def _result(self, best: torch.Tensor, mean: torch.Tensor, best_score: torch.Tensor) -> torch.Tensor:
        return mean.clamp(self.cfg.low, self.cfg.high)
