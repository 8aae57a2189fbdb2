"""Best-of-N SAC: the control of HMC-SAC. N = K + 1 policy samples, the best by the critics.

TorchRL's SAC (same networks, budget and schedule as :class:`~.sac.SAC`), acting with the best
of ``bon.num_samples`` policy samples by the trained critics' minimum, and the same selection
for the TD target's next action: the critic evaluations of an HMC chain of ``K = N - 1`` steps,
spent on selection. A gain of HMC-SAC is credited to the chain only above this.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torchrl.envs import EnvBase

from torchrl_mcmc import BestOfNActor, BestOfNSACLoss
from torchrl_mcmc.recipes.factories import make_critic, make_stochastic_policy
from torchrl_mcmc.recipes.methods.sac import SAC, sac_loss_kwargs


class BestOfNSAC(SAC):
    """BestOfNActor + BestOfNSACLoss: SAC's update, with the best-of-N target and acting."""

    sections = frozenset({"sac", "bon"})

    def make_loss(
        self, cfg: DictConfig, env: EnvBase, device: torch.device
    ) -> tuple[BestOfNSACLoss, BestOfNActor]:
        actor = BestOfNActor(
            make_stochastic_policy(cfg, env),
            make_critic(cfg, env),
            num_samples=cfg.bon.num_samples,
        ).to(device)
        loss = BestOfNSACLoss(actor, **sac_loss_kwargs(cfg, env))
        return loss.to(device), actor
