"""Best-of-N SAC: the control of HMC-SAC. N = K + 1 policy samples, the best by the critics.

    python examples/bon_sac.py                      # Hopper-v4, paper-scale budget
    python examples/bon_sac.py preset=quick         # Pendulum-v1

TorchRL's SAC (same networks, budget and schedule as ``sac.py``), acting with the best of
``bon.num_samples`` policy samples by the trained critics' minimum, and the same selection for
the TD target's next action: the critic evaluations of an HMC chain of ``K = N - 1`` steps,
spent on selection. A gain of HMC-SAC is credited to the chain only above this.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from any directory

from examples.experiment import run
from examples.sac import SAC, sac_loss_kwargs
from examples.utils import make_critic, make_stochastic_policy
from torchrl_mcmc import BestOfNActor, BestOfNSACLoss


class BestOfNSAC(SAC):
    """BestOfNActor + BestOfNSACLoss: SAC's update, with the best-of-N target and acting."""

    def make_loss(
        self, cfg: DictConfig, env, device: torch.device
    ) -> tuple[BestOfNSACLoss, BestOfNActor]:
        actor = BestOfNActor(
            make_stochastic_policy(cfg, env),
            make_critic(cfg, env),
            num_samples=cfg.bon.num_samples,
        ).to(device)
        loss = BestOfNSACLoss(actor, **sac_loss_kwargs(cfg, env))
        return loss.to(device), actor


@hydra.main(config_path="config", config_name="bon_sac", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg, BestOfNSAC)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
