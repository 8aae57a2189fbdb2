"""Best-of-N SAC: the control of HMC-SAC. N = K + 1 policy samples, the best by the critics.

    python examples/bon_sac.py                      # Hopper-v4, paper-scale budget
    python examples/bon_sac.py preset=quick         # Pendulum-v1

TorchRL's SAC (same networks, budget and schedule as ``sac.py``), acting with the best of
``bon.num_samples`` policy samples by the trained critics' minimum, and the same selection for
the TD target's next action: the critic evaluations of an HMC chain of ``K = N - 1`` steps,
spent on selection. A gain of HMC-SAC is credited to the chain only above this.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from any directory

from examples.experiment import LossMethod, adam_for_actor_and_critics, run
from examples.utils import make_critic, make_stochastic_policy
from torchrl_mcmc import BestOfNActor, BestOfNSACLoss


class BestOfNSAC(LossMethod):
    """BestOfNActor + BestOfNSACLoss (TorchRL SAC v2 with the best-of-N target)."""

    def __init__(self, cfg: DictConfig, env, device: torch.device) -> None:
        self.actor = BestOfNActor(
            make_stochastic_policy(cfg, env),
            make_critic(cfg, env),
            num_samples=cfg.bon.num_samples,
        ).to(device)
        loss = BestOfNSACLoss(
            self.actor,
            num_qvalue_nets=2,
            loss_function=cfg.optim.loss_function,
            alpha_init=cfg.sac.alpha_init,
            fixed_alpha=cfg.sac.fixed_alpha,
            delay_qvalue=True,
            action_spec=env.action_spec,
        ).to(device)
        optimizers = adam_for_actor_and_critics(loss, cfg.optim.lr)
        if not cfg.sac.fixed_alpha:
            optimizers["alpha"] = torch.optim.Adam([loss.log_alpha], lr=cfg.optim.lr)
        super().__init__(cfg, loss, policy=self.actor, optimizers=optimizers)

    def update(self, batch) -> dict[str, float]:
        out = self.loss(batch)
        self._step(out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"])
        self.target_updater.step()
        return {k: v.item() for k, v in out.items() if v.numel() == 1}

    def end_iteration(self, metrics: list[dict[str, float]]) -> dict[str, float]:
        return {"alpha": math.exp(self.loss.log_alpha.item())}


@hydra.main(config_path="config", config_name="bon_sac", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg, BestOfNSAC)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
