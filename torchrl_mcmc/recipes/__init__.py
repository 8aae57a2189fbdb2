"""Training recipes: the methods of the paper and their baselines, trained end to end.

What a user who wants "HMC-SAC on my env, resumable" needs, importable: the factories
(environments, networks, collector, replay buffer), the methods (:class:`SAC`,
:class:`HMCSAC`, :class:`BestOfNSAC`, :class:`TD3`, :class:`LDTD3`), their Hydra
configurations (``config/``, shipped with the package), :func:`train`, the loop they share,
:class:`Run`, the pieces that loop is written with (run directories, atomic checkpoints, resume
and a clean stop on SIGTERM), and :func:`load_run`, a trained run back in Python.

From Python::

    from torchrl_mcmc.recipes import HMCSAC, compose_config, load_run, train

    cfg = compose_config("hmc_sac", ["env=Hopper-v4", "seed=1"])
    run = train(cfg, HMCSAC)  # a run directory under runs/hmc_sac/Hopper-v4/
    run.exit_code, run.path, run.summary["final_return"]
    trained = load_run(run.path)  # later, in another process: the newest checkpoint's actor
    trained.rollout()  # one deterministic episode; trained.record_video("hopper.gif")

From the command line, ``python -m torchrl_mcmc.recipes hmc_sac env=Hopper-v4 seed=1``, which
trains as ``examples/hmc_sac.py`` does in a clone (that script writes :func:`train`'s loop out
with :class:`Run`).

The library proper (:mod:`torchrl_mcmc.mcmc`, ``modules``, ``objectives``, ``control``) never
imports this package; it depends on Hydra and OmegaConf, the library does not.
"""

from pathlib import Path

from torchrl_mcmc.recipes.cli import CONFIG_PATH, check_command_line, compose_config
from torchrl_mcmc.recipes.config_rules import ConfigError
from torchrl_mcmc.recipes.evaluation import evaluate, make_eval_env, record_video
from torchrl_mcmc.recipes.exit_codes import ExitCode
from torchrl_mcmc.recipes.factories import (
    make_collector,
    make_critic,
    make_deterministic_policy,
    make_env,
    make_replay_buffer,
    make_stochastic_policy,
    make_td3_exploration,
)
from torchrl_mcmc.recipes.methods import (
    HMCSAC,
    LDTD3,
    METHODS,
    SAC,
    TD3,
    BestOfNSAC,
    LossMethod,
    Method,
)
from torchrl_mcmc.recipes.run import Run
from torchrl_mcmc.recipes.trained import TrainedRun, load_run
from torchrl_mcmc.recipes.trainer import train

#: The folder of the recipes' Hydra configurations.
CONFIG_DIR = Path(__file__).resolve().parent / "config"

__all__ = [
    "CONFIG_DIR",
    "CONFIG_PATH",
    "HMCSAC",
    "LDTD3",
    "METHODS",
    "SAC",
    "TD3",
    "BestOfNSAC",
    "ConfigError",
    "ExitCode",
    "LossMethod",
    "Method",
    "Run",
    "TrainedRun",
    "check_command_line",
    "compose_config",
    "evaluate",
    "load_run",
    "make_collector",
    "make_critic",
    "make_deterministic_policy",
    "make_env",
    "make_eval_env",
    "make_replay_buffer",
    "make_stochastic_policy",
    "make_td3_exploration",
    "record_video",
    "train",
]
