"""A behaviour-cloned action prior on the world model's latent state, to guide offline planning.

A planner searching a learned model finds action sequences on which the model is wrong (on Push the
imagined block slides to the goal while the real one stays put; bench/RESULTS.md). MBOP (Argenson &
Dulac-Arnold, 2021) plans with an offline model by sampling around a policy cloned from the data, so
the candidates stay where the model was trained. :class:`BehaviourPrior` is that policy: a Gaussian on
the latent features the planner filters, fitted by maximum likelihood to the actions of the data's
successful episodes. :class:`BehaviourPriorGuide` hands the planner noisy rollouts of it in imagination
(``prior_rollout``, the interface of :class:`robobrain.rl.ActorCriticGuide`).

Saved beside the world-model checkpoint it was fitted on (``<checkpoint>/behaviour_prior/``:
``model.safetensors`` + ``config.json``, written atomically) with a fingerprint of that checkpoint's
weights: its features mean nothing to another model, so loading it with one is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robobrain.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    CheckpointError,
    load_checkpoint,
    load_weights,
    resolve_checkpoint,
    restore_set_aside,
    save_weights,
    write_directory_atomically,
)
from robobrain.data.store import Episode, reports_success
from robobrain.planning.mpc import PriorRollout
from robobrain.rl.guide import roll_out_prior
from robobrain.world_model import State, WorldModel
from robobrain.world_model.networks import MLP

PRIOR_DIR = "behaviour_prior"


@dataclass(frozen=True)
class BehaviourPriorConfig:
    hidden: int = 512
    layers: int = 3
    """512 x 3 layers: on Push the prior alone succeeded 54 % / 52 % on two 50-seed sets, 256 x 2
    30 % / 32 %, at about the same validation error (bench/RESULTS.md)."""
    steps: int = 3000
    """Gradient steps at most; the weights kept are those with the lowest validation error."""
    batch_size: int = 512
    lr: float = 1e-3
    eval_every: int = 100
    """Steps between validation checks."""
    successful_only: bool = True
    """Clone only episodes that ended in success (filtered behaviour cloning); False: all of them."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.layers < 0 or not self.lr > 0:
            raise ValueError(f"need layers >= 0 and lr > 0, got {self.layers}, {self.lr}")


class BehaviourPrior(nn.Module):
    """pi(a | s) = N(tanh(MLP(feat)), diag(std^2)), std state-independent and learned.

    feat: latent features [M, F] (``State.feat`` of the world model it was fitted on)."""

    def __init__(self, feat_dim: int, action_dim: int, hidden: int = 512, layers: int = 3) -> None:
        super().__init__()
        self.feat_dim, self.action_dim = feat_dim, action_dim
        self.net = MLP(feat_dim, action_dim, hidden, layers)
        self.log_std = nn.Parameter(torch.full((action_dim,), -1.0))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """The mean action [M, A] in (-1, 1)."""
        if feat.shape[-1] != self.feat_dim:
            raise ValueError(f"features must be [..., {self.feat_dim}], got {list(feat.shape)}")
        return torch.tanh(self.net(feat.float()))

    @property
    def std(self) -> torch.Tensor:
        return self.log_std.exp()

    def nll(self, feat: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood (up to a constant) of actions [M, A] given features [M, F]."""
        z = (action - self(feat)) / self.std
        return (0.5 * z.square() + self.log_std).sum(-1).mean()


class BehaviourPriorGuide:
    """Planner guide from a :class:`BehaviourPrior`: ``num_prior`` action sequences per env, each
    the prior's mean plus Gaussian noise of ``noise_std`` at every step, rolled along its own
    imagined states (the first one noiseless). No value: ``use_value`` is False."""

    use_value = False

    def __init__(
        self, prior: BehaviourPrior, num_prior: int = 255, noise_std: float = 0.1, seed: int = 0
    ) -> None:
        if num_prior < 1 or not 0 <= noise_std < float("inf"):  # (NaN fails both)
            raise ValueError(f"need num_prior >= 1 and a finite noise_std >= 0, got {num_prior}, {noise_std}")
        self.prior = prior.eval()
        self.num_prior = num_prior
        self.noise_std = noise_std
        self.seed = seed
        self._gen: torch.Generator | None = None

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen

    def _perturb(self, mean: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(mean.shape, generator=self._generator(mean.device), device=mean.device)
        return (mean + self.noise_std * noise).clamp(-1.0, 1.0)

    def value(self, feat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("a behaviour prior has no value function (use_value is False)")

    @torch.no_grad()
    def prior_rollout(
        self, model: WorldModel, state: State, horizon: int, disagreement: bool = True
    ) -> PriorRollout:
        """``num_prior`` action sequences [B, P, H, A] from ``state`` [B] and their imagined future."""
        b, p = state.deter.shape[0], self.num_prior
        first = torch.arange(0, b * p, p, device=state.deter.device)

        def act(s: State) -> torch.Tensor:
            mean = self.prior(s.feat)
            a = self._perturb(mean)
            a[first] = mean[first]
            return a.to(s.deter.dtype)

        return roll_out_prior(model, state, p, horizon, act, disagreement)


# --- data -----------------------------------------------------------------------------------------
@torch.no_grad()
def latent_dataset(
    model: WorldModel, episodes: Iterable[Episode], device: torch.device | str = "cpu", chunk: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, F], actions [N, A]) of every step of ``episodes``, filtered by the model as the
    planner filters (posterior mode from the first frame, one update per step).

    The features of step t are the posterior after observation o_t; the action is a_t, taken after it."""
    feats, actions = [], []
    model = model.eval()
    for group in _same_length_chunks(episodes, chunk):
        pixels = torch.from_numpy(np.stack([ep.pixels[:-1] for ep in group])).to(device)
        action = torch.from_numpy(np.stack([ep.action for ep in group])).to(device)
        state = torch.from_numpy(np.stack([ep.state[:-1] for ep in group])).to(device)
        post = model.posteriors({"pixels": pixels, "action": action, "state": state}, sample=False)
        feats.append(post.feat.flatten(0, 1).float().cpu())
        actions.append(action.flatten(0, 1).float().cpu())
    if not feats:
        raise ValueError("no episodes to clone")
    return torch.cat(feats), torch.cat(actions)


def _same_length_chunks(episodes: Iterable[Episode], chunk: int) -> Iterator[list[Episode]]:
    """Groups of at most ``chunk`` episodes of one length (they are stacked), in arrival order."""
    pending: dict[int, list[Episode]] = {}
    for ep in episodes:
        if len(ep) == 0:
            continue
        group = pending.setdefault(len(ep), [])
        group.append(ep)
        if len(group) == chunk:
            yield pending.pop(len(ep))
    yield from (g for g in pending.values() if g)


def select_episodes(episodes: Iterable[Episode], successful_only: bool) -> list[Episode]:
    """The episodes to clone: those that ended in success (``success`` at the last step) or all."""
    return [ep for ep in episodes if not successful_only or (len(ep) and bool(ep.success[-1]))]


# --- fitting --------------------------------------------------------------------------------------
def fit_behaviour_prior(
    model: WorldModel,
    train: list[Episode],
    val: list[Episode],
    cfg: BehaviourPriorConfig | None = None,
    device: torch.device | str = "cpu",
) -> tuple[BehaviourPrior, dict[str, Any]]:
    """Clone the actions of ``train`` episodes (filtered per ``cfg.successful_only``); keep the weights
    with the lowest action error on ``val`` (same filter); the fit runs on ``device``. Returns (prior,
    on the CPU, report): the report gives the validation MSE of the prior's mean and of the constant
    mean action of the training set. (The former is that of the weights kept, which the same
    validation episodes chose: slightly optimistic; no third split is held out for it.)"""
    cfg = cfg or BehaviourPriorConfig()
    if cfg.successful_only and not any(reports_success(ep.meta) for ep in [*train, *val]):
        raise ValueError(
            "behaviour cloning of successful episodes: these episodes' env reports no success "
            "(info['success']); pass --all-episodes (successful_only=False) to clone them all"
        )
    train, val = select_episodes(train, cfg.successful_only), select_episodes(val, cfg.successful_only)
    if not train or not val:
        raise ValueError(
            f"behaviour cloning needs training and validation episodes"
            f"{' that ended in success' if cfg.successful_only else ''}: got {len(train)} and {len(val)} "
            "(more episodes, e.g. scripted ones with less noise in another --data store"
            f"{', or --all-episodes' if cfg.successful_only else ''})"
        )
    low = min(float(ep.action.min(initial=0.0)) for ep in train + val)
    high = max(float(ep.action.max(initial=0.0)) for ep in train + val)
    if low < -1.0 or high > 1.0:  # (its tanh would clone a squashed copy of them)
        raise ValueError(
            f"the behaviour prior acts in [-1, 1], but these episodes' actions reach [{low:g}, {high:g}]: "
            "collect them in the env wrapped in gymnasium.wrappers.RescaleAction(env, -1, 1)"
        )
    # (the latents come back on the CPU; the fit runs on ``device`` too)
    x, y = (t.to(device) for t in latent_dataset(model, train, device))
    vx, vy = (t.to(device) for t in latent_dataset(model, val, device))
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # (batch indices drawn on the CPU: same on any device)
    prior = BehaviourPrior(x.shape[1], y.shape[1], cfg.hidden, cfg.layers).to(device)
    opt = torch.optim.Adam(prior.parameters(), lr=cfg.lr)
    best_mse, best_state, best_step = math.inf, None, 0
    first_nll = last_nll = math.nan
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(x), (cfg.batch_size,), generator=gen).to(x.device)
        loss = prior.nll(x[idx], y[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"behaviour cloning loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last_nll = loss.item()
        if step == 1:
            first_nll = last_nll
        if step % cfg.eval_every == 0 or step == cfg.steps:
            with torch.no_grad():
                mse = (prior(vx) - vy).square().mean().item()
            if mse < best_mse:
                best_mse, best_step = mse, step
                best_state = {k: v.detach().clone() for k, v in prior.state_dict().items()}
    assert best_state is not None
    prior.load_state_dict(best_state)
    report = {
        "train_episodes": len(train),
        "val_episodes": len(val),
        "train_steps": len(x),
        "nll_first": first_nll,
        "nll_last": last_nll,
        "val_mse": best_mse,
        "val_mse_mean_action": (y.mean(0) - vy).square().mean().item(),
        "best_step": best_step,
        "std": prior.std.tolist(),
    }
    return prior.cpu().eval(), report


# --- persistence ----------------------------------------------------------------------------------
def weights_fingerprint(checkpoint: str | Path) -> str:
    """sha256 of a world-model checkpoint's ``model.safetensors``."""
    path = resolve_checkpoint(checkpoint) / MODEL_FILE
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError as e:  # (a checkpoint of training state only, or its weights removed)
        raise CheckpointError(f"{path}: missing") from e
    return digest.hexdigest()


def save_behaviour_prior(
    prior: BehaviourPrior, checkpoint: str | Path, cfg: BehaviourPriorConfig, report: dict[str, Any]
) -> Path:
    """Write ``<checkpoint>/behaviour_prior/`` atomically (replacing an older one); returns it."""
    ckpt = resolve_checkpoint(checkpoint)
    config = {
        "feat_dim": prior.feat_dim,
        "action_dim": prior.action_dim,
        "prior": asdict(cfg),
        "world_model_sha256": weights_fingerprint(ckpt),
        "fit": report,
    }

    def write(tmp: Path) -> None:
        save_weights(prior, tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))

    return write_directory_atomically(ckpt / PRIOR_DIR, write)


def load_behaviour_prior(checkpoint: str | Path, device: torch.device | str = "cpu") -> BehaviourPrior:
    """The prior saved beside a world-model checkpoint; refused (``CheckpointError``) when that
    checkpoint's weights are not the ones it was fitted on."""
    ckpt = resolve_checkpoint(checkpoint)
    directory = ckpt / PRIOR_DIR
    if not restore_set_aside(directory) or not (directory / MODEL_FILE).exists():
        raise CheckpointError(f"{directory}: no behaviour prior (fit one with `robobrain train-prior`)")
    saved = load_checkpoint(directory, with_training_state=False)
    try:
        cfg = BehaviourPriorConfig(**saved.config["prior"])
        feat_dim, action_dim = int(saved.config["feat_dim"]), int(saved.config["action_dim"])
        fingerprint = saved.config["world_model_sha256"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / CONFIG_FILE}: not a behaviour-prior config ({e})") from e
    if fingerprint != weights_fingerprint(ckpt):
        raise CheckpointError(
            f"{directory}: fitted on other world-model weights than {ckpt / MODEL_FILE}; "
            "refit it with `robobrain train-prior`"
        )
    prior = BehaviourPrior(feat_dim, action_dim, cfg.hidden, cfg.layers)
    load_weights(prior, saved)
    return prior.to(device).eval()
