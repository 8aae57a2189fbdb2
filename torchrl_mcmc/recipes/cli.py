"""Entry points to the recipes: a configuration composed from Python (:func:`compose_config`),
and the command line ``python -m torchrl_mcmc.recipes <recipe> [override ...]`` (:func:`main`).

Both read the configurations shipped in ``torchrl_mcmc/recipes/config``, so that an installed
package trains without a clone of the repository.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from omegaconf import DictConfig

from torchrl_mcmc.recipes.methods import METHODS
from torchrl_mcmc.recipes.trainer import train

#: Hydra's ``config_path`` of the shipped configurations.
CONFIG_PATH = "pkg://torchrl_mcmc.recipes.config"


def compose_config(recipe: str, overrides: Sequence[str] = ()) -> DictConfig:
    """A recipe's configuration as its script composes it, with Hydra ``overrides``.

    For :func:`~torchrl_mcmc.recipes.trainer.train` outside a Hydra app: the run directory is
    then ``<run_root>/<method>/<env>/seed<N>-<time>``, as the scripts make it.

    Args:
        recipe: the configuration's name (``sac``, ``hmc_sac``, ``bon_sac``, ``td3``,
            ``ld_td3``).
        overrides: Hydra overrides, e.g. ``["preset=smoke", "env=Pendulum-v1"]``.

    Examples:
        >>> cfg = compose_config("hmc_sac", ["preset=smoke", "env=Pendulum-v1"])
        >>> cfg.env.name, cfg.collector.total_frames, cfg.hmc.num_steps
        ('Pendulum-v1', 400, 5)
    """
    from hydra import compose, initialize_config_module

    with initialize_config_module("torchrl_mcmc.recipes.config", version_base="1.3"):
        return compose(recipe, overrides=list(overrides))


def hydra_app(recipe: str) -> Callable[[], None]:
    """The Hydra application of ``recipe``, the same as ``examples/<recipe>.py``'s, reading its
    command line from ``sys.argv``."""
    import hydra

    method_cls = METHODS[recipe]

    @hydra.main(config_path=CONFIG_PATH, config_name=recipe, version_base="1.3")
    def app(cfg: DictConfig) -> None:
        code = train(cfg, method_cls)
        if code:
            sys.exit(code)  # 2: bad input; 128 + N: stopped by signal N (resume=<run dir>)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m torchrl_mcmc.recipes <recipe> [override ...]``: trains one recipe.

    Everything after the recipe's name is Hydra's command line, as the scripts take it
    (``key=value`` overrides, ``-m`` for a multirun, ``--cfg job`` to print the
    configuration...). Exits 2 naming the recipes for an unknown one.
    """
    parser = argparse.ArgumentParser(
        prog="python -m torchrl_mcmc.recipes",
        description="Train a recipe from its shipped Hydra configuration.",
    )
    parser.add_argument("recipe", choices=sorted(METHODS))
    parser.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="Hydra overrides and flags, e.g. env=Ant-v4"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    # Hydra reads its command line from sys.argv; the job is named after the recipe, as a
    # script's is after its file.
    sys.argv = [sys.argv[0], *args.overrides, f"hydra.job.name={args.recipe}"]
    hydra_app(args.recipe)()
