"""The deterministic baseline: TorchRL's own ``TD3Loss`` with the budget of ``ld_td3.py``.

    python examples/td3.py env=Ant-v4
    python examples/td3.py preset=quick

The method is :class:`torchrl_mcmc.recipes.TD3`; the rest is
:func:`torchrl_mcmc.recipes.train`'s. Configuration: ``torchrl_mcmc/recipes/config/td3.yaml``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from torchrl_mcmc.recipes import TD3, train


@hydra.main(config_path="pkg://torchrl_mcmc.recipes.config", config_name="td3", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # Run directory, collection, updates, evaluation, checkpoints: torchrl_mcmc/recipes/trainer.py
    code = train(cfg, TD3)
    if code:
        sys.exit(code)  # 2: bad input; 128 + N: stopped by signal N (resume=<run dir>)


if __name__ == "__main__":
    main()
