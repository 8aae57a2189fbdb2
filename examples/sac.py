"""The baseline: TorchRL's own ``SACLoss`` with the networks, data and budget of ``hmc_sac.py``.

    python examples/sac.py env=Ant-v4
    python examples/sac.py preset=quick

The method is :class:`torchrl_mcmc.recipes.SAC`; everything else (environment, networks,
collection, replay, evaluation, budget, checkpoints, resume) is
:func:`torchrl_mcmc.recipes.train`'s, the same for every script. Configuration:
``torchrl_mcmc/recipes/config/sac.yaml``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from torchrl_mcmc.recipes import SAC, train


@hydra.main(config_path="pkg://torchrl_mcmc.recipes.config", config_name="sac", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # Run directory, collection, updates, evaluation, checkpoints: torchrl_mcmc/recipes/trainer.py
    code = train(cfg, SAC)
    if code:
        sys.exit(code)  # 2: bad input; 128 + N: stopped by signal N (resume=<run dir>)


if __name__ == "__main__":
    main()
