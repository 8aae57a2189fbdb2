"""Entry points to the recipes: a configuration composed from Python (:func:`compose_config`),
and the command line ``python -m torchrl_mcmc.recipes <recipe> [override ...]`` (:func:`main`).

Both read the configurations shipped in ``torchrl_mcmc/recipes/config``, so that an installed
package trains without a clone of the repository. A command line Hydra cannot compose (an
unknown key, config group or option) exits with code 2 and the nearest valid name, before Hydra
starts (:func:`check_command_line`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from torchrl_mcmc.recipes.config_rules import (
    ConfigError,
    config_problems,
    leaves,
    nearest,
    show_value,
    unknown_key_problem,
)
from torchrl_mcmc.recipes.exit_codes import ExitCode
from torchrl_mcmc.recipes.methods import METHODS
from torchrl_mcmc.recipes.trainer import train

if TYPE_CHECKING:
    from hydra.core.config_loader import ConfigLoader
    from hydra.core.override_parser.types import Override

logger = logging.getLogger(__name__)

#: Hydra's ``config_path`` of the shipped configurations.
CONFIG_PATH = "pkg://torchrl_mcmc.recipes.config"
#: The package that holds them.
CONFIG_MODULE = "torchrl_mcmc.recipes.config"


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

    Raises:
        ConfigError: for a recipe that is not one of them, or overrides Hydra cannot compose
            (a key, config group or option the recipe lacks, named with the nearest valid one).
        TypeError: for ``overrides`` that are not a sequence of strings (one string is not).
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(recipe, str) or recipe not in METHODS:
        raise ConfigError(f"recipe={recipe!r}: no such recipe; must be one of {', '.join(METHODS)}")
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise TypeError(
            "overrides must be a list of strings such as ['preset=smoke', 'env=Pendulum-v1'], "
            f"got {overrides!r}"
        )
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose(recipe, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException):
        problems = command_line_problems(recipe, list(overrides))
        if not problems:
            raise
        raise ConfigError.listing(problems) from None


def command_line_problems(recipe: str, args: Sequence[str]) -> list[str]:
    """Why Hydra cannot compose ``recipe``'s configuration from a script's command line
    ``args`` (overrides and Hydra's flags, as ``sys.argv[1:]``); empty if it can.

    Each override of a key the configuration lacks, a config group the recipe does not have or
    an option its group does not have is named with the nearest valid one; any other failure
    to compose is Hydra's own message. With ``-m``, every value of a sweep is tried, and
    checked against its rule (:func:`~torchrl_mcmc.recipes.config_rules.config_problems`) before
    the first job trains; a ``hydra/launcher`` without ``-m`` (which Hydra would ignore, training
    here) is refused. A key added with ``+`` composes, and is the run's own check
    (:func:`~torchrl_mcmc.recipes.config_rules.validate_config`). A command line that asks
    Hydra for help, or for another search path, is left to Hydra.
    """
    from hydra import compose, initialize_config_module
    from hydra._internal.utils import get_args_parser  # the parser of hydra.main itself
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    flags = get_args_parser().parse_args(list(args))
    if flags.help or flags.hydra_help or flags.shell_completion or flags.info:
        return []
    if flags.config_path or flags.config_dir or flags.experimental_rerun:
        return []
    name = flags.config_name or recipe
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        try:
            overrides = OverridesParser.create(loader).parse_overrides(flags.overrides)
        except HydraException as err:
            return [" ".join(str(err).split())]
        if any(o.is_interval_sweep() for o in overrides):
            return []  # a sweeper's own (Optuna's...): not for the basic one to enumerate
        jobs = _sweep_jobs(overrides) if flags.multirun else [list(flags.overrides)]
        defaults = compose(name) if flags.multirun else None
        for job in jobs:
            try:
                composed = compose(name, overrides=job, return_hydra_config=True)
            except (HydraException, OmegaConfBaseException) as err:
                found = _override_problems(name, overrides, loader)
                return found or [" ".join(str(err).split())]
            if flags.multirun:  # a single run's values are Preflight's, before its directory
                task = OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"])
                problems = config_problems(task, defaults)
                if problems:
                    return problems
    launchers = [o.input_line for o in overrides if o.key_or_group == "hydra/launcher"]
    if launchers and not flags.multirun:
        return [
            f"{launchers[0]}: Hydra uses a launcher only for a multirun; add -m to launch "
            "through it, or leave it out to train in this process"
        ]
    return []


def _sweep_jobs(overrides: list[Override]) -> list[list[str]]:
    """The jobs of a multirun that together try every value of every sweep: the i-th takes
    each sweep's i-th value (its last, past its end)."""
    values = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in overrides
    ]
    jobs = max((len(v) for v in values), default=1)
    return [[v[min(i, len(v) - 1)] for v in values] for i in range(jobs)]


def _override_problems(name: str, overrides: list[Override], loader: ConfigLoader) -> list[str]:
    """The overrides that name a config group, an option or a key that ``name``'s
    configuration does not have, each with the nearest valid one."""
    from hydra import compose

    choices = compose(name, return_hydra_config=True).hydra.runtime.choices
    groups = _config_groups(loader)
    problems = []
    for override in overrides:
        group = override.key_or_group
        if group not in groups:
            continue
        if group not in choices and not (override.is_add() or override.is_force_add()):
            own = ", ".join(sorted(g for g in choices if not g.startswith("hydra/")))
            problems.append(
                f"{override.input_line}: {name}'s configuration has no {group} group "
                f"(its groups: {own})"
            )
            continue
        if override.is_delete():
            continue
        options = loader.get_group_options(group)
        chosen = override.sweep_string_iterator() if override.is_sweep_override() else None
        for value in [override.value()] if chosen is None else list(chosen):
            if value is None or str(value) in options:
                continue
            guess = nearest(str(value), options)
            hint = f"did you mean {guess}? " if guess is not None else ""
            problems.append(
                f"{group}={show_value(value)}: no such option of {group} ({hint}its options: "
                f"{', '.join(options)})"
            )
    if problems:
        return problems
    # The keys, in the configuration those config groups make (a launcher's keys...).
    group_job = [o.input_line for o in overrides if o.key_or_group in groups]
    composed = compose(name, overrides=group_job, return_hydra_config=True)
    paths = _paths(OmegaConf.to_container(composed, resolve=False))
    known = set(leaves(composed, resolve=False)) | {g for g in choices if "/" not in g}
    for override in overrides:
        key = override.key_or_group
        if key in groups or key in paths:
            continue
        if override.is_add() or override.is_force_add() or override.is_delete():
            continue
        value = override.get_value_element_as_str() if override.is_sweep_override() else None
        value = override.value() if value is None else value
        problems.append(unknown_key_problem(key, value, known))
    return problems


def _config_groups(loader: ConfigLoader, parent: str = "") -> set[str]:
    """Every config group under ``parent`` (all of them from ``""``): ``env``,
    ``hydra/launcher``..."""
    groups = set()
    for group in loader.list_groups(parent):
        path = f"{parent}/{group}" if parent else group
        groups |= {path} | _config_groups(loader, path)
    return groups


def _paths(node: object, prefix: str = "") -> set[str]:
    """The dotted path of every node below ``node``, a plain container (lists' items not)."""
    if not isinstance(node, dict):
        return set()
    paths = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        paths |= {path} | _paths(value, f"{path}.")
    return paths


def check_command_line(recipe: str, args: Sequence[str] | None = None) -> None:
    """Exits with code 2 (:attr:`~torchrl_mcmc.recipes.exit_codes.ExitCode.BAD_INPUT`),
    logging why, when Hydra cannot compose ``recipe``'s configuration from the command line
    (``sys.argv[1:]`` by default): :func:`command_line_problems`. Returns otherwise.

    Hydra reports such a command line itself with exit code 1, before any callback can check
    it: a script calls this before its ``@hydra.main`` function, as :func:`main` does::

        if __name__ == "__main__":
            check_command_line("hmc_sac")
            main()
    """
    problems = command_line_problems(recipe, sys.argv[1:] if args is None else args)
    if problems:
        logger.error("configuration error: %s", ConfigError.listing(problems))
        sys.exit(ExitCode.BAD_INPUT)


def hydra_app(recipe: str) -> Callable[[], None]:
    """The Hydra application of ``recipe``, the same as ``examples/<recipe>.py``'s, reading its
    command line from ``sys.argv``."""
    import hydra

    method_cls = METHODS[recipe]

    @hydra.main(config_path=CONFIG_PATH, config_name=recipe, version_base="1.3")
    def app(cfg: DictConfig) -> None:
        run = train(cfg, method_cls)
        if run.exit_code:  # only then: a Hydra multirun goes on to its next job
            sys.exit(run.exit_code)  # ExitCode: 2 bad input, 4 diverged, 128 + N signal N

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m torchrl_mcmc.recipes <recipe> [override ...]``: trains one recipe.

    Everything after the recipe's name is Hydra's command line, as the scripts take it
    (``key=value`` overrides, ``-m`` for a multirun, ``--cfg job`` to print the
    configuration...). Exits 2 naming the recipes for an unknown one, and for a command line
    Hydra cannot compose (:func:`check_command_line`).
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
    check_command_line(args.recipe, args.overrides)
    # Hydra reads its command line from sys.argv; the job is named after the recipe, as a
    # script's is after its file.
    sys.argv = [sys.argv[0], *args.overrides, f"hydra.job.name={args.recipe}"]
    hydra_app(args.recipe)()
