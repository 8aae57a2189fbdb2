"""A trained run, from Python: :func:`load_run` gives its configuration, its method with the
weights of its newest checkpoint and its ``summary.json``; :class:`TrainedRun` rolls the actor
out, evaluates it and records a video of it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_mcmc.recipes.checkpoint import load_checkpoint
from torchrl_mcmc.recipes.evaluation import evaluate, make_eval_env, record_video
from torchrl_mcmc.recipes.factories import make_env, resolve_device
from torchrl_mcmc.recipes.methods import METHODS, Method

__all__ = ["TrainedRun", "load_run"]

#: The section of a run's configuration that tells which recipe made it, tried in this order
#: (``method`` is free: ``method=hmc_sac_ent`` names a variant's runs).
_RECIPE_SECTIONS = (("hmc", "hmc_sac"), ("flow", "ld_td3"), ("bon", "bon_sac"), ("td3", "td3"))


@dataclass
class TrainedRun:
    """A run directory loaded by :func:`load_run`.

    Examples:
        Roll the trained actor out, evaluate it and record one episode (MuJoCo tasks render
        with ``MUJOCO_GL=egl`` on a machine without a display)::

            trained = load_run("runs/hmc_sac/Hopper-v4/seed0-20261124-101500")
            episode = trained.rollout()  # one deterministic episode, a TensorDict
            print(episode["next", "reward"].sum().item(), trained.summary["final_return"])
            print(trained.evaluate(episodes=10))
            trained.record_video("hopper.gif")
    """

    #: The run directory.
    path: Path
    #: The run's configuration (its ``config.yaml``).
    cfg: DictConfig
    #: The method, with the weights (and optimiser states) of the newest checkpoint.
    method: Method
    #: The frames the run had collected at that checkpoint.
    frames: int
    #: The run's ``summary.json``; ``None`` for a run that did not complete.
    summary: dict[str, Any] | None

    @property
    def policy(self) -> nn.Module:
        """The policy that acts (the method's; deterministic under
        ``set_exploration_type(ExplorationType.DETERMINISTIC)``, as in the evaluations)."""
        return self.method.policy

    def rollout(self, max_steps: int | None = None, seed: int | None = None) -> TensorDictBase:
        """One deterministic episode of the task, of at most ``max_steps`` steps (default
        ``env.max_episode_steps``), as TorchRL's ``EnvBase.rollout`` returns it."""
        env = make_env(self.cfg)
        if seed is not None:
            env.set_seed(seed)
        steps = self.cfg.env.max_episode_steps if max_steps is None else max_steps
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            episode = env.rollout(steps, self.policy)
        env.close()
        return episode

    def evaluate(self, episodes: int | None = None, seed: int = 0) -> float:
        """The mean return of ``episodes`` deterministic episodes (default ``eval.episodes``),
        as the run's evaluations measure it."""
        cfg = self.cfg
        if episodes is not None:
            cfg = OmegaConf.merge(cfg, {"eval": {"episodes": episodes}})
        env = make_eval_env(cfg)
        env.set_seed(seed)
        try:
            return evaluate(self.policy, env, cfg.env.max_episode_steps)
        finally:
            env.close()

    def record_video(self, path: str | Path, max_steps: int | None = None) -> Path:
        """One deterministic episode rendered to a GIF at ``path`` (see
        :func:`~torchrl_mcmc.recipes.evaluation.record_video`); returns ``path``."""
        record_video(self.policy, self.cfg, Path(path), max_steps=max_steps)
        return Path(path)


def load_run(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    method_cls: type[Method] | None = None,
) -> TrainedRun:
    """A run directory's configuration, its method with the weights of its newest intact
    checkpoint, and its ``summary.json`` when it has one.

    Args:
        run_dir: the run directory (``config.yaml``, ``checkpoints/``...).
        device: where the method's networks live (``auto``: CUDA when present).
        method_cls: the method's class; by default the one of the recipe that made the run.

    Examples:
        A run trained from Python, then loaded back (in another process, say)::

            from torchrl_mcmc.recipes import SAC, compose_config, load_run, train

            run = train(compose_config("sac", ["preset=smoke", "env=Pendulum-v1"]), SAC)
            trained = load_run(run.path)
            trained.frames, trained.summary["final_return"]  # 400, and the run's result
            trained.rollout(max_steps=5).shape  # torch.Size([5])
    """
    path = Path(run_dir).expanduser().resolve()
    cfg = OmegaConf.load(path / "config.yaml")
    if method_cls is None:
        method_cls = METHODS[_recipe(cfg)]
    # Read onto the CPU, then copied to ``device``: a CUDA run loads on a machine without one.
    state = load_checkpoint(path, map_location="cpu")
    env = make_env(cfg)
    # Built with random weights, at once replaced: the caller's RNG stream is left as it was.
    with torch.random.fork_rng(devices=[]):
        method = method_cls(cfg, env, resolve_device(str(device)))
    env.close()
    method.load_state_dict(state["method"])
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return TrainedRun(path, cfg, method, state["frames"], summary)


def _recipe(cfg: DictConfig) -> str:
    """The recipe (``config/<name>.yaml``) that made a run, from its configuration."""
    if cfg.method in METHODS:
        return cfg.method
    return next((recipe for section, recipe in _RECIPE_SECTIONS if section in cfg), "sac")
