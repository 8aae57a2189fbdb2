"""LD-TD3: a TD3 agent whose action is refined by a Langevin flow on the critic (paper §3.1).

    python examples/ld_td3.py env=Ant-v4
    python examples/ld_td3.py preset=quick

The method is :class:`torchrl_mcmc.recipes.LDTD3`; everything else is
:func:`torchrl_mcmc.recipes.train`'s, shared with ``td3.py``. Configuration:
``torchrl_mcmc/recipes/config/ld_td3.yaml``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from torchrl_mcmc.recipes import LDTD3, train


@hydra.main(
    config_path="pkg://torchrl_mcmc.recipes.config", config_name="ld_td3", version_base="1.3"
)
def main(cfg: DictConfig) -> None:
    # Run directory, collection, updates, evaluation, checkpoints: torchrl_mcmc/recipes/trainer.py
    code = train(cfg, LDTD3)
    if code:
        sys.exit(code)  # 2: bad input; 128 + N: stopped by signal N (resume=<run dir>)


if __name__ == "__main__":
    main()
