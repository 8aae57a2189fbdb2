"""LD-TD3: a TD3 agent whose action is refined by a Langevin flow on the critic (paper §3.1)."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from torchrl.envs import EnvBase

from torchrl_mcmc import LangevinFlowActor, LangevinFlowLoss
from torchrl_mcmc.recipes.factories import make_critic, make_deterministic_policy
from torchrl_mcmc.recipes.methods.base import LossMethod


def ld_actor_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """:class:`~torchrl_mcmc.LangevinFlowActor`'s keyword arguments from the configuration
    (those of the environment, the state width and the action spec, aside)."""
    return {
        "num_layers": cfg.flow.num_layers,
        "step_size": cfg.flow.step_size,
        "hidden": cfg.flow.hidden,
        "exploration_noise": cfg.td3.exploration_noise,
        "potential_critic": cfg.flow.potential_critic,
        "pessimism": cfg.flow.pessimism,
    }


def ld_loss_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """:class:`~torchrl_mcmc.LangevinFlowLoss`'s keyword arguments from the configuration."""
    return {
        "loss_function": cfg.optim.loss_function,
        "policy_noise": cfg.td3.policy_noise,
        "noise_clip": cfg.td3.noise_clip,
        "update_mode": cfg.flow.update_mode,
    }


class LDTD3(LossMethod):
    """LangevinFlowActor + LangevinFlowLoss + PID beta, TD3's delayed policy updates.

    Args:
        cfg: the ``ld_td3`` recipe's configuration (``flow.*``, ``td3.*``, ``pid.*``...).
        env: an environment of the task, for its specs.
        device: where the networks live.
    """

    sections = frozenset({"flow", "td3", "pid"})
    pid_controlled = True
    delayed_policy = True

    def __init__(self, cfg: DictConfig, env: EnvBase, device: torch.device) -> None:
        self.actor = LangevinFlowActor(
            make_deterministic_policy(cfg, env),
            make_critic(cfg, env),
            state_dim=env.observation_spec["observation"].shape[-1],
            action_spec=env.action_spec,
            **ld_actor_kwargs(cfg),
        ).to(device)
        loss = LangevinFlowLoss(self.actor, **ld_loss_kwargs(cfg)).to(device)
        loss.beta = cfg.pid.beta_init  # the controller's start, or beta for good
        optimizers = {
            "critic": torch.optim.Adam(loss.critic_parameters(), lr=cfg.optim.lr),
            "policy": torch.optim.Adam(loss.policy_parameters(), lr=cfg.optim.lr),
        }
        flow_parameters = list(loss.flow_parameters())
        if flow_parameters:  # none with flow.num_layers=0: TD3's actor with the trust region
            optimizers["flow"] = torch.optim.Adam(flow_parameters, lr=cfg.flow.lr)
        super().__init__(cfg, loss, policy=self.actor, optimizers=optimizers)

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        loss_qvalue, _ = self.loss.qvalue_loss(batch)
        critic_moved = self._step(loss_qvalue, "critic")
        metrics = {"loss_qvalue": loss_qvalue.item()}
        if self._policy_turn():
            loss_actor, info = self.loss.actor_loss(batch)
            if "flow" not in self.optimizers:
                moved = self._step(loss_actor, "policy")
            elif self.loss.update_mode == "joint":
                moved = self._step(loss_actor, "policy", "flow")
            else:
                moved = self._step(loss_actor, "policy")
                loss_flow, _ = self.loss.flow_loss(batch)  # eq. 11: h moves at the new theta
                moved = self._step(loss_flow, "flow") and moved
                metrics["loss_flow"] = loss_flow.item()
            if critic_moved and moved:  # a skipped (non-finite) step moves no target
                self.target_updater.step()
            metrics["loss_actor"] = loss_actor.item()
            metrics.update({k: float(v) for k, v in info.items()})
        return self._count_update(metrics)
