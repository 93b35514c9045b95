"""CEM and MPPI on problems with known optima; bounds, NaN scores, seeding, budgets, batching."""

import itertools
import re
import time

import pytest
import torch

from robobrain.planning.optimizers import CEM, MPPI, OptimizerConfig

OPTIMIZERS = [CEM, MPPI]


def make(cls, seed=0, **kw):
    cfg = OptimizerConfig(**{"num_samples": 256, "num_elites": 32, "iterations": 10, **kw})
    return cls(cfg, generator=torch.Generator().manual_seed(seed))


def quadratic(target: torch.Tensor):
    """score = -||a - target||², target: [B, H, A]."""
    return lambda a: -((a - target.unsqueeze(1)) ** 2).sum((-2, -1))


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_quadratic_optimum_batched(cls):
    target = torch.tensor([[[0.3, -0.5]] * 4, [[-0.8, 0.1]] * 4])  # B=2, H=4, A=2, different optima
    best = make(cls).optimize(quadratic(target), torch.zeros(2, 4, 2))
    assert best.shape == (2, 4, 2)
    torch.testing.assert_close(best, target, atol=0.06, rtol=0)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_outputs_stay_in_bounds(cls):
    target = torch.full((3, 5, 2), 4.0)  # optimum far outside [-1, 1]
    result = make(cls).plan(quadratic(target), torch.full((3, 5, 2), 7.0))
    assert result.best.min() >= -1 and result.best.max() <= 1
    assert torch.allclose(result.best, torch.ones_like(result.best), atol=0.05)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_refitted_means_stay_in_bounds_to_the_last_float(cls):
    """The weighted mean of in-bounds elites, with momentum, rounded one float32 step past ``high``
    (3 of these 48 plans before the refit clamped it); as candidate 0 it came back as the plan."""
    for high, momentum, seed in itertools.product([-0.9, 0.1, 0.3, 0.7], [0.1, 0.3, 0.7], range(2)):
        opt = make(cls, seed, num_samples=16, num_elites=4, iterations=3, init_std=3.0, momentum=momentum,
                   high=high)  # fmt: skip
        result = opt.plan(lambda a: a.sum((-1, -2)), torch.full((2, 3, 2), high))
        assert result.best.max() <= high and result.mean.max() <= high, (high, momentum, seed)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_nan_and_inf_scores_never_win(cls):
    target = torch.full((2, 3, 1), 0.8)

    def score(a):
        s = quadratic(target)(a)
        s = torch.where(
            a[..., 0, 0] > 0.2, torch.full_like(s, float("nan")), s
        )  # the good region is poisoned
        return torch.where(a[..., 0, 0] < -0.9, torch.full_like(s, float("inf")), s)

    result = make(cls).plan(score, torch.zeros(2, 3, 1))
    assert torch.isfinite(result.score).all()
    assert (result.best[..., 0, 0] <= 0.2).all() and (result.best[..., 0, 0] >= -0.9).all()


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_all_invalid_scores_keep_the_mean(cls):
    init = torch.full((2, 3, 2), 0.25)
    result = make(cls).plan(lambda a: torch.full(a.shape[:2], float("nan")), init)
    torch.testing.assert_close(result.best, init)
    assert torch.isinf(result.score).all()


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_seeded(cls):
    target = torch.rand(2, 4, 3, generator=torch.Generator().manual_seed(5)) * 2 - 1
    a = make(cls, seed=3).optimize(quadratic(target), torch.zeros(2, 4, 3))
    b = make(cls, seed=3).optimize(quadratic(target), torch.zeros(2, 4, 3))
    c = make(cls, seed=4).optimize(quadratic(target), torch.zeros(2, 4, 3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_matches_brute_force_on_a_tiny_grid(cls):
    """H=2, A=1, a non-convex score: the optimizer is at least as good as a 41x41 grid search."""

    def f(a):  # a: [..., 2, 1]
        x, y = a[..., 0, 0], a[..., 1, 0]
        return -((x - 0.3) ** 2) - (y + 0.5) ** 2 + 0.3 * torch.cos(6 * x) * torch.sin(4 * y)

    grid = torch.linspace(-1, 1, 41)
    cand = torch.tensor(list(itertools.product(grid.tolist(), grid.tolist()))).reshape(-1, 2, 1)
    brute = f(cand).max()
    result = make(cls, init_std=0.8).plan(lambda a: f(a), torch.zeros(1, 2, 1))
    assert f(result.best)[0] >= brute - 2e-3


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_point_mass_mpc_reaches_target(cls):
    """A 2-D point mass x' = x + 0.1 a, re-planned every step (shifted warm start) reaches its goal."""
    goal = torch.tensor([[0.6, -0.4], [-0.5, 0.7]])
    x = torch.zeros(2, 2)
    h = 8
    opt = make(cls, iterations=5)
    plan = torch.zeros(2, h, 2)

    def score(a):  # a: [B, N, H, 2]
        pos = x[:, None, None, :] + 0.1 * a.cumsum(2)
        return -((pos - goal[:, None, None, :]) ** 2).sum(-1).sum(-1)

    for _ in range(25):
        plan = opt.optimize(score, plan)
        x = x + 0.1 * plan[:, 0]
        plan = torch.cat([plan[:, 1:], torch.zeros_like(plan[:, :1])], 1)
    assert torch.linalg.norm(x - goal, dim=-1).max() < 0.05


def test_time_budget_stops_early():
    def slow(a):
        time.sleep(0.05)
        return -(a**2).sum((-2, -1))

    result = make(CEM, iterations=50, time_budget=0.12).plan(slow, torch.zeros(1, 2, 1))
    assert result.iterations in range(1, 5), result.iterations


def test_prior_samples_are_used():
    target = torch.full((1, 3, 2), 0.9)
    prior = target.unsqueeze(1).expand(1, 4, 3, 2)
    result = make(CEM, iterations=1, init_std=0.01).plan(quadratic(target), torch.full((1, 3, 2), -0.9),
                                                         prior_samples=prior)  # fmt: skip
    torch.testing.assert_close(result.best, target)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_prior_samples_join_every_iteration(cls):
    """As the docstring says: at every iteration, not only the first (one iteration above shows none)."""
    target = torch.full((1, 3, 2), 0.9)
    prior = torch.rand(1, 4, 3, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen = []

    def score(actions):
        seen.append(actions.clone())
        return quadratic(target)(actions)

    make(cls, iterations=3).plan(score, torch.zeros(1, 3, 2), prior_samples=prior)
    assert len(seen) == 3 and all(torch.equal(a[:, 1:5], prior) for a in seen)


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs 0 < num_elites <= num_samples"):
        CEM(OptimizerConfig(num_samples=4, num_elites=8))
    # left out, the elites are an eighth of the samples: fewer samples need no second setting
    assert [OptimizerConfig(num_samples=n).elites for n in (512, 256, 16, 4)] == [64, 32, 2, 1]
    for cls in OPTIMIZERS:
        with pytest.raises(ValueError, match="iterations >= 1"):
            cls(OptimizerConfig(iterations=0))
    # (name, values, the condition the message states: the message also shows every field's value,
    # so matching the field's name alone would pass for any check)
    inf = float("inf")  # (an infinite std clamped every sample to the bounds: a corner search)
    # (1e39 and 1e-46 are inf and 0 in the search's float32: a RuntimeError at the first plan, an
    # all-zero MPPI plan)
    bad = [("momentum", (1.0, 1.5, -0.1), "0 <= momentum < 1"),
           ("init_std", (0.0, -0.5, inf, 1e39), "0 < init_std < float32's max"),
           ("min_std", (-0.1, float("nan"), inf, 1e39), "0 <= min_std < float32's max"),
           ("time_budget", (-1.0,), "time_budget >= 0"),
           ("temperature", (0.0, -1.0, float("nan"), inf, 1e39, 1e-46),
            "0 < temperature < inf in float32"),  # (CEM's too: train)
           ("high", (-1.0, -2.0, inf), "finite low < high"),
           ("low", (-inf, 1.0), "finite low < high"),
           ("num_samples", (1, 0), "num_samples >= 2")]  # fmt: skip
    # (one sample is the mean itself, candidate 0: the plan never left the warm start)
    for name, values, condition in bad:  # momentum 1 kept the initial mean, 1.5 moved away from the optimum
        for value in values:
            with pytest.raises(ValueError, match=f"needs {re.escape(condition)}"):
                OptimizerConfig(**{name: value})
    # (temperature 0 planned all zeros, < 0 favoured the worst: refused with the config, above)
    with pytest.raises(ValueError, match="B, N"):
        make(CEM).optimize(lambda a: torch.zeros(3), torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="init_mean"):
        make(CEM).optimize(lambda a: torch.zeros(a.shape[:2]), torch.zeros(3, 1))
    nan_prior = torch.full((2, 1, 3, 1), float("nan"))
    with pytest.raises(ValueError, match="NaN or inf"):
        make(CEM).plan(lambda a: torch.zeros(a.shape[:2]), torch.zeros(2, 3, 1), prior_samples=nan_prior)
    for cls in OPTIMIZERS:  # a NaN warm start came back as the plan (clamping keeps NaN)
        for bad in (float("nan"), float("inf")):
            mean = torch.zeros(2, 3, 1)
            mean[1, 2, 0] = bad
            with pytest.raises(ValueError, match="init_mean holds NaN or inf"):
                make(cls).optimize(lambda a: torch.zeros(a.shape[:2]), mean)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_given_noise_replaces_the_generator(cls):
    """``plan(noise=...)`` samples with the given draws: same noise, same plan, whatever the
    generator; a wrong noise shape is refused."""
    target = torch.rand(2, 4, 3, generator=torch.Generator().manual_seed(5)) * 2 - 1
    noise = torch.randn(10, 2, 256, 4, 3, generator=torch.Generator().manual_seed(9))
    kw = {"iterations": 10}
    a = make(cls, seed=1, **kw).plan(quadratic(target), torch.zeros(2, 4, 3), noise=noise)
    b = make(cls, seed=2, **kw).plan(quadratic(target), torch.zeros(2, 4, 3), noise=noise)
    torch.testing.assert_close(a.best, b.best, rtol=0, atol=0)
    torch.testing.assert_close(a.best, target, atol=0.1, rtol=0)  # it still optimizes
    with pytest.raises(ValueError, match="noise must be"):
        make(cls, **kw).plan(quadratic(target), torch.zeros(2, 4, 3), noise=noise[:9])


def test_numpy_means_are_taken_and_a_per_problem_std_is_refused():
    """A numpy init_mean raised AttributeError; a [B] std meant per problem was broadcast along the
    action dimension when B == A."""
    import numpy as np

    opt = make(CEM, iterations=2)
    target = torch.zeros(3, 4, 3)
    best = opt.optimize(quadratic(target), np.zeros((3, 4, 3), np.float32))
    assert best.shape == (3, 4, 3)
    with pytest.raises(ValueError, match=re.escape("init_std must be a scalar or [B, H, A], got [3]")):
        opt.plan(quadratic(target), torch.zeros(3, 4, 3), init_std=torch.tensor([0.01, 0.5, 2.0]))
    opt.plan(quadratic(target), torch.zeros(3, 4, 3), init_std=torch.full((3, 4, 3), 0.2))


@pytest.mark.parametrize("min_std", [0.05, 0.3])
@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_one_refit_is_the_documented_formula(cls, min_std):
    """Elites' weights (CEM equal, MPPI softmax over score / temperature), momentum on mean and std, the
    std floor: each could be dropped with every other test passing."""
    cfg = OptimizerConfig(num_samples=6, num_elites=3, iterations=1, init_std=0.5, min_std=min_std,
                          momentum=0.25, temperature=0.5)  # fmt: skip
    noise = torch.tensor([0.0, 1.0, -0.4, 0.2, 0.6, -1.0]).view(1, 1, 6, 1, 1)  # [iterations, B, N, H, A]
    result = cls(cfg).plan(lambda a: -((a - 0.3) ** 2).sum((-2, -1)), torch.full((1, 1, 1), 0.1), noise=noise)
    x = (0.1 + 0.5 * noise.flatten()).clamp(-1, 1)
    x[0] = 0.1  # the current mean is always a candidate
    top, idx = (-((x - 0.3) ** 2)).topk(3)
    w = torch.full((3,), 1 / 3) if cls is CEM else torch.softmax((top - top[0]) / 0.5, 0)
    mean = (w * x[idx]).sum()
    std = (w * (x[idx] - mean) ** 2).sum().sqrt()
    torch.testing.assert_close(result.mean.flatten(), (0.25 * 0.1 + 0.75 * mean).view(1))
    torch.testing.assert_close(result.std.flatten(), (0.25 * 0.5 + 0.75 * std).clamp(min=min_std).view(1))


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_the_warm_start_mean_competes(cls):
    """Started at the optimum, the plan stays there: the mean is one of the candidates."""
    target = torch.rand(2, 4, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    optimizer = cls(OptimizerConfig(num_samples=16, num_elites=2, iterations=1, momentum=0.0),
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    result = optimizer.plan(lambda a: -((a - target.unsqueeze(1)) ** 2).sum((-2, -1)), target)
    assert torch.equal(result.score, torch.zeros(2))


# --- from a mutation audit (session 30): refits with invalid elites, prior samples out of bounds ---
@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_a_refit_weighs_only_the_finite_elites(cls):
    """Three elites, one of them scored NaN: the refit is over the two finite ones alone (CEM: 1/2
    each, not 1/3; MPPI: softmax over the two, shifted by the best)."""
    cfg = OptimizerConfig(num_samples=6, num_elites=3, iterations=1, init_std=0.5, min_std=0.0,
                          momentum=0.0, temperature=0.5)  # fmt: skip
    noise = torch.tensor([0.0, 1.0, -0.4, 0.2, 0.6, -1.0]).view(1, 1, 6, 1, 1)
    x = (0.1 + 0.5 * noise.flatten()).clamp(-1, 1)
    x[0] = 0.1
    finite = torch.tensor([False, True, False, False, True, False])

    def score(a):
        s = -((a - 0.3) ** 2).sum((-2, -1))
        return torch.where(finite.view(1, 6), s, torch.full_like(s, float("nan")))

    result = cls(cfg).plan(score, torch.full((1, 1, 1), 0.1), noise=noise)
    xs = x[finite]
    s = -((xs - 0.3) ** 2)
    w = torch.full((2,), 0.5) if cls is CEM else torch.softmax((s - s.max()) / 0.5, 0)
    mean = (w * xs).sum()
    torch.testing.assert_close(result.mean.flatten(), mean.view(1))
    torch.testing.assert_close(result.std.flatten(), (w * (xs - mean) ** 2).sum().sqrt().view(1))


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_all_invalid_scores_keep_the_std_too(cls):
    init = torch.full((2, 3, 2), 0.25)
    cfg = OptimizerConfig(num_samples=16, num_elites=4, iterations=3, init_std=0.4, min_std=0.05)
    result = cls(cfg, generator=torch.Generator().manual_seed(0)).plan(
        lambda a: torch.full(a.shape[:2], float("nan")), init
    )
    torch.testing.assert_close(result.std, torch.full_like(init, 0.4))
    torch.testing.assert_close(result.mean, init)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_prior_samples_outside_the_bounds_are_clamped(cls):
    cfg = OptimizerConfig(num_samples=8, num_elites=2, iterations=2)
    prior = torch.full((1, 2, 3, 2), 3.0)
    result = cls(cfg, generator=torch.Generator().manual_seed(0)).plan(
        lambda a: a.sum((-2, -1)), torch.zeros(1, 3, 2), prior_samples=prior
    )
    for t in (result.best, result.mean):
        assert t.min() >= -1 and t.max() <= 1
    assert torch.isfinite(result.score).all() and result.score.max() <= 6.0 + 1e-5


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_float64_scores_beyond_float32s_range_still_win(cls):
    """Cast to float32, scores of ~1e300 became inf and were dropped as invalid: the worst won."""
    target = torch.full((1, 2, 1), 0.5)

    def score(a):  # 1e300 within 0.2 of the target (a ball: its elites' mean stays in it), else -distance²
        s = quadratic(target)(a).double()
        return torch.where(s > -0.04, torch.full_like(s, 1e300), s)

    best = make(cls).optimize(score, torch.zeros(1, 2, 1))
    assert score(best.unsqueeze(1)).item() == 1e300


def test_mppi_with_the_smallest_float32_temperature_plans_its_best_elite():
    """1e-45 (float32's smallest step) still divides: the best elite takes all the weight."""
    target = torch.full((1, 2, 1), 0.6)
    best = make(MPPI, temperature=1e-45).optimize(quadratic(target), torch.zeros(1, 2, 1))
    torch.testing.assert_close(best, target, atol=0.1, rtol=0)


def test_mppi_plans_the_final_weighted_mean_not_the_best_sample():
    cfg = OptimizerConfig(num_samples=32, num_elites=8, iterations=2)
    target = torch.full((2, 3, 2), 0.4)
    result = MPPI(cfg, generator=torch.Generator().manual_seed(0)).plan(
        lambda a: -((a - target.unsqueeze(1)) ** 2).sum((-2, -1)), torch.zeros(2, 3, 2)
    )
    torch.testing.assert_close(result.best, result.mean.clamp(-1, 1), rtol=0, atol=0)


# --- from a mutation audit (session 39) --------------------------------------------------------------
@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_plans_init_std_sets_the_first_samples_spread(cls):
    """``plan(init_std=)`` (a scalar or [B, H, A]) replaces ``cfg.init_std`` for the first samples."""
    spread = {}
    for std in (0.01, None, torch.full((2, 3, 1), 0.01)):
        seen: list[torch.Tensor] = []

        def score(a: torch.Tensor, seen: list[torch.Tensor] = seen) -> torch.Tensor:
            seen.append(a.clone())
            return torch.zeros(a.shape[:2])

        make(cls, iterations=1).plan(score, torch.zeros(2, 3, 1), init_std=std)
        spread[None if std is None else "tensor" if torch.is_tensor(std) else std] = seen[0].std().item()
    assert spread[0.01] < 0.02 and spread["tensor"] < 0.02 and spread[None] > 0.3, spread


def test_a_tie_keeps_the_best_plan_found_first():
    """Every candidate scoring the same (a flat or saturated score), CEM keeps the warm-start mean, the
    first candidate of the first iteration, not a later random one."""
    init = torch.rand(2, 4, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    best = make(CEM, iterations=3).optimize(lambda a: torch.zeros(a.shape[:2]), init)
    assert torch.equal(best, init)
