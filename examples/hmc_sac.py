"""HMC-SAC: a SAC-style agent whose actor is refined by Hamiltonian dynamics (paper §3.2).

    python examples/hmc_sac.py                      # Hopper-v4, paper-scale budget
    python examples/hmc_sac.py env=Ant-v4
    python examples/hmc_sac.py preset=quick         # Pendulum-v1, < 15 min on 2 CPU cores
    python examples/hmc_sac.py resume=runs/hmc_sac/Hopper-v4/seed0-20261124-101500

The method is :class:`torchrl_mcmc.recipes.HMCSAC`; everything else (environment, networks,
collection, replay, evaluation, budget, checkpoints, resume) is
:func:`torchrl_mcmc.recipes.train`'s, shared with ``sac.py``. Configuration:
``torchrl_mcmc/recipes/config/hmc_sac.yaml``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from torchrl_mcmc.recipes import HMCSAC, train


@hydra.main(
    config_path="pkg://torchrl_mcmc.recipes.config", config_name="hmc_sac", version_base="1.3"
)
def main(cfg: DictConfig) -> None:
    # Run directory, collection, updates, evaluation, checkpoints: torchrl_mcmc/recipes/trainer.py
    code = train(cfg, HMCSAC)
    if code:
        sys.exit(code)  # 2: bad input; 128 + N: stopped by signal N (resume=<run dir>)


if __name__ == "__main__":
    main()
