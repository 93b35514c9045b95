"""SAC whose critic learns the return of the rewards alone, the value a planner can add to reward sums.

SB3's SAC learns a soft Q: its critic's target ``r + gamma * (Q'(s', a') - alpha * log pi(a' | s'))``
pays the policy's future entropy as reward, ``alpha * H * gamma / (1 - gamma)`` on top of the return
at a constant entropy, and not a constant: it varies with the state through pi's entropy. The MPC
planner adds the critic's value to sums of imagined rewards that carry no entropy term
(:class:`robobrain.rl.ActorCriticGuide`), so a soft value prefers plan end states for made-up reasons
(on rewards that are all 0 it learned values of 2-3, spread by 0.4 across states). TD-MPC2 and
DreamerV3 keep entropy out of the critic: it regularises the actor's loss only. :class:`RewardValueSAC`
is SB3's SAC with that critic target; everything else (the temperature's tuning, the actor's loss,
target updates, gSDE, n-step discounts) is SAC's update as SB3 makes it.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import SAC
from stable_baselines3.common.utils import polyak_update


class RewardValueSAC(SAC):
    """SB3's :class:`~stable_baselines3.SAC` with a critic target of rewards only:
    ``r + gamma * (1 - done) * min_i Q'_i(s', a')``, ``a' ~ pi(s')``. Saved zips load as SAC does
    (``SAC.load`` acts with them the same)."""

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)
        logs: dict[str, list[float]] = defaultdict(list)
        for step in range(gradient_steps):
            batch = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = getattr(batch, "discounts", None)  # (n-step returns: SB3 >= 2.7 only)
            discounts = self.gamma if discounts is None else discounts
            if self.use_sde:  # (a fresh exploration matrix: log_std may have changed)
                self.actor.reset_noise()
            actions_pi, log_prob = self.actor.action_log_prob(batch.observations)
            log_prob = log_prob.reshape(-1, 1)
            alpha = self._temperature(log_prob, logs)

            with torch.no_grad():  # the entropy bonus stays out of the target (see the module's text)
                next_actions, _ = self.actor.action_log_prob(batch.next_observations)
                next_q = torch.cat(self.critic_target(batch.next_observations, next_actions), dim=1)
                target = (
                    batch.rewards + (1 - batch.dones) * discounts * next_q.min(dim=1, keepdim=True).values
                )
            critic_loss = 0.5 * sum(
                F.mse_loss(q, target) for q in self.critic(batch.observations, batch.actions)
            )
            assert isinstance(critic_loss, torch.Tensor)
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            q_pi = (
                torch.cat(self.critic(batch.observations, actions_pi), dim=1).min(dim=1, keepdim=True).values
            )
            actor_loss = (alpha * log_prob - q_pi).mean()
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()

            if step % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)
            logs["critic_loss"].append(critic_loss.item())
            logs["actor_loss"].append(actor_loss.item())
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        for name, values in logs.items():
            self.logger.record(f"train/{name}", np.mean(values))

    def _temperature(self, log_prob: torch.Tensor, logs: dict[str, list[float]]) -> torch.Tensor:
        """alpha for this step, before its own update (SAC's order); with automatic tuning, one
        step of its optimizer towards ``target_entropy`` (log_prob [batch, 1]: pi's, detached there)."""
        if self.ent_coef_optimizer is None or self.log_ent_coef is None:
            alpha = self.ent_coef_tensor
        else:
            alpha = torch.exp(self.log_ent_coef.detach())
            assert isinstance(self.target_entropy, float)
            loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
            self.ent_coef_optimizer.zero_grad()
            loss.backward()
            self.ent_coef_optimizer.step()
            logs["ent_coef_loss"].append(loss.item())
        logs["ent_coef"].append(alpha.item())
        return alpha
