"""SAC, the baseline: TorchRL's own ``SACLoss`` with the networks, data and budget of HMC-SAC."""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs import EnvBase
from torchrl.objectives import SACLoss

from torchrl_mcmc.recipes.factories import make_critic, make_stochastic_policy
from torchrl_mcmc.recipes.methods.base import LossMethod, adam_for_actor_and_critics


class SAC(LossMethod):
    """TorchRL SAC (v2: twin Q, no V network), automatic or fixed entropy coefficient.

    Args:
        cfg: the ``sac`` recipe's configuration (``sac.*``, ``optim.*``, ``network.*``).
        env: an environment of the task, for its specs.
        device: where the networks live.
    """

    sections = frozenset({"sac"})

    def __init__(self, cfg: DictConfig, env: EnvBase, device: torch.device) -> None:
        loss, acting = self.make_loss(cfg, env, device)
        optimizers = adam_for_actor_and_critics(loss, cfg.optim.lr)
        if not cfg.sac.fixed_alpha:
            optimizers["alpha"] = torch.optim.Adam([loss.log_alpha], lr=cfg.optim.lr)
        super().__init__(cfg, loss, policy=acting, optimizers=optimizers)

    def make_loss(
        self, cfg: DictConfig, env: EnvBase, device: torch.device
    ) -> tuple[SACLoss, nn.Module]:
        """The loss and the policy that acts (here, SAC's own policy)."""
        policy = make_stochastic_policy(cfg, env).to(device)
        loss = SACLoss(policy, make_critic(cfg, env).to(device), **sac_loss_kwargs(cfg, env))
        return loss.to(device), policy

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        out = self.loss(batch)
        # A skipped (non-finite) step moves no target either.
        if self._step(out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]):
            self.target_updater.step()
        return {k: v.item() for k, v in out.items() if v.numel() == 1}

    def end_iteration(self, metrics: list[dict[str, float]]) -> dict[str, float]:
        return {"alpha": math.exp(self.loss.log_alpha.item())}


def sac_loss_kwargs(cfg: DictConfig, env: EnvBase) -> dict[str, Any]:
    """SACLoss's arguments shared by SAC and its best-of-N control."""
    return {
        "num_qvalue_nets": 2,
        "loss_function": cfg.optim.loss_function,
        "alpha_init": cfg.sac.alpha_init,
        "fixed_alpha": cfg.sac.fixed_alpha,
        "delay_actor": False,
        "delay_qvalue": True,
        "action_spec": env.action_spec,
    }
