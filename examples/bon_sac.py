"""Best-of-N SAC: the control of HMC-SAC. N = K + 1 policy samples, the best by the critics.

    python examples/bon_sac.py                      # Hopper-v4, paper-scale budget
    python examples/bon_sac.py preset=quick         # Pendulum-v1

TorchRL's SAC (same networks, budget and schedule as ``sac.py``), acting with the best of
``bon.num_samples`` policy samples by the trained critics' minimum, and the same selection for
the TD target's next action: the critic evaluations of an HMC chain of ``K = N - 1`` steps,
spent on selection. A gain of HMC-SAC is credited to the chain only above this.

The method is :class:`torchrl_mcmc.recipes.BestOfNSAC`; the rest is
:func:`torchrl_mcmc.recipes.train`'s. Configuration: ``torchrl_mcmc/recipes/config/bon_sac.yaml``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from torchrl_mcmc.recipes import BestOfNSAC, train


@hydra.main(
    config_path="pkg://torchrl_mcmc.recipes.config", config_name="bon_sac", version_base="1.3"
)
def main(cfg: DictConfig) -> None:
    # Run directory, collection, updates, evaluation, checkpoints: torchrl_mcmc/recipes/trainer.py
    code = train(cfg, BestOfNSAC)
    if code:
        sys.exit(code)  # 2: bad input; 128 + N: stopped by signal N (resume=<run dir>)


if __name__ == "__main__":
    main()
