"""TD3, the deterministic baseline: TorchRL's own ``TD3Loss`` with the budget of LD-TD3."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from tensordict.nn import TensorDictSequential
from torchrl.envs import EnvBase
from torchrl.objectives import TD3Loss

from torchrl_mcmc.recipes.factories import (
    make_critic,
    make_deterministic_policy,
    make_td3_exploration,
)
from torchrl_mcmc.recipes.methods.base import LossMethod, adam_for_actor_and_critics


class TD3(LossMethod):
    """TorchRL TD3: twin critics, target policy smoothing, delayed policy and target updates.

    Args:
        cfg: the ``td3`` recipe's configuration (``td3.*``, ``optim.*``, ``network.*``).
        env: an environment of the task, for its specs.
        device: where the networks live.
    """

    sections = frozenset({"td3"})
    delayed_policy = True

    def __init__(self, cfg: DictConfig, env: EnvBase, device: torch.device) -> None:
        actor = make_deterministic_policy(cfg, env).to(device)
        policy = TensorDictSequential(actor, make_td3_exploration(cfg, env)).to(device)
        loss = TD3Loss(
            actor,
            make_critic(cfg, env).to(device),
            num_qvalue_nets=2,
            action_spec=env.action_spec,
            policy_noise=cfg.td3.policy_noise,
            noise_clip=cfg.td3.noise_clip,
            loss_function=cfg.optim.loss_function,
            delay_actor=True,
            delay_qvalue=True,
        ).to(device)
        optimizers = adam_for_actor_and_critics(loss, cfg.optim.lr)
        super().__init__(cfg, loss, policy=policy, optimizers=optimizers)

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        loss_qvalue, _ = self.loss.value_loss(batch)  # TorchRL's name for the critic loss
        critic_moved = self._step(loss_qvalue, "critic")
        metrics = {"loss_qvalue": loss_qvalue.item()}
        if self._policy_turn():
            loss_actor, _ = self.loss.actor_loss(batch)
            moved = self._step(loss_actor, "actor")
            if critic_moved and moved:  # a skipped (non-finite) step moves no target
                self.target_updater.step()
            metrics["loss_actor"] = loss_actor.item()
        return metrics
