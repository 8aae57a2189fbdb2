"""A trained run, from Python: :func:`load_run` gives its configuration, its method with the
weights of its newest checkpoint and its ``summary.json``; :class:`TrainedRun` rolls the actor
out, evaluates it and records a video of it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_mcmc.mcmc.settings import check_integer
from torchrl_mcmc.recipes.checkpoint import (
    CheckpointError,
    has_checkpoint,
    latest_checkpoint,
    load_checkpoint,
)
from torchrl_mcmc.recipes.config_rules import ConfigError, show_value
from torchrl_mcmc.recipes.config_rules import device as device_rule
from torchrl_mcmc.recipes.evaluation import evaluate, make_eval_env, record_video
from torchrl_mcmc.recipes.factories import make_env, resolve_device
from torchrl_mcmc.recipes.methods import METHODS, Method, method_fit_problem, recipe_of
from torchrl_mcmc.recipes.resume import checkpoint_mismatches, load_run_config

__all__ = ["TrainedRun", "load_run"]


@dataclass
class TrainedRun:
    """A run directory loaded by :func:`load_run`.

    Its methods check their arguments before they make an env: a bad one raises a
    ``ValueError`` (a ``TypeError`` for one of the wrong type: a non-integer, a ``path`` that
    is no path) naming it, its value and what is allowed.

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
        ``env.max_episode_steps``), as TorchRL's ``EnvBase.rollout`` returns it.

        Raises:
            TypeError: ``max_steps`` or ``seed`` is not an integer (nor ``None``).
            ValueError: ``max_steps`` is below 1, or ``seed`` below 0.
        """
        steps = _max_steps(max_steps, self.cfg)
        if seed is not None:
            _integer("seed", seed, 0, "or None")
        env = make_env(self.cfg)
        if seed is not None:
            env.set_seed(seed)
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            episode = env.rollout(steps, self.policy)
        env.close()
        return episode

    def evaluate(self, episodes: int | None = None, seed: int = 0) -> float:
        """The mean return of ``episodes`` deterministic episodes (default ``eval.episodes``),
        as the run's evaluations measure it.

        Raises:
            TypeError: ``episodes`` (nor ``None``) or ``seed`` is not an integer.
            ValueError: ``episodes`` is below 1, or ``seed`` below 0.
        """
        cfg = self.cfg
        if episodes is not None:
            default = f"or None for the run's eval.episodes ({show_value(cfg.eval.episodes)})"
            episodes = _integer("episodes", episodes, 1, default)
            cfg = OmegaConf.merge(cfg, {"eval": {"episodes": episodes}})
        _integer("seed", seed, 0)
        env = make_eval_env(cfg)
        env.set_seed(seed)
        try:
            return evaluate(self.policy, env, cfg.env.max_episode_steps)
        finally:
            env.close()

    def record_video(self, path: str | Path, max_steps: int | None = None) -> Path:
        """One deterministic episode rendered to a GIF at ``path`` (see
        :func:`~torchrl_mcmc.recipes.evaluation.record_video`); returns ``path``.

        Raises:
            TypeError: ``path`` is not a ``str`` or ``os.PathLike``.
            ValueError: ``path`` does not end in ``.gif`` or its folder does not exist, or
                ``max_steps`` is not an integer >= 1 (nor ``None``).
        """
        if not isinstance(path, str | os.PathLike):
            raise TypeError(
                f"path must be a file path (a str or a pathlib.Path) ending in .gif, got "
                f"path={path!r} ({type(path).__name__})."
            )
        gif = Path(path).expanduser()
        if gif.suffix.lower() != ".gif":
            raise ValueError(f"path must end in .gif (the video is a GIF), got path={str(path)!r}.")
        if not gif.parent.is_dir():
            raise ValueError(
                f"path={str(path)!r}: its folder {gif.parent} does not exist; must be a file "
                "in an existing folder."
            )
        steps = _max_steps(max_steps, self.cfg)
        record_video(self.policy, self.cfg, gif, max_steps=steps)
        return Path(path)


def _max_steps(max_steps: Any, cfg: DictConfig) -> int:
    """``max_steps``, or ``env.max_episode_steps`` for ``None``; an error naming it if it is no
    integer >= 1 (see :func:`_integer`)."""
    if max_steps is None:
        return cfg.env.max_episode_steps
    default = f"or None for the run's env.max_episode_steps ({cfg.env.max_episode_steps})"
    return _integer("max_steps", max_steps, 1, default)


def _integer(name: str, value: Any, minimum: int, alternative: str = "") -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum``
    (:func:`~torchrl_mcmc.mcmc.settings.check_integer`); otherwise the error that raises, of
    the same type (a ``TypeError`` for a non-integer, a ``ValueError`` for one below
    ``minimum``), its message naming the ``alternative`` allowed as well (``"or None for
    ..."``)."""
    try:
        return check_integer(name, value, minimum)
    except (TypeError, ValueError) as err:
        allowed = f"an integer >= {minimum}" + (f", {alternative}" if alternative else "")
        raise type(err)(f"{name} must be {allowed}, got {name}={value!r}.") from None


def load_run(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    method_cls: Callable[[DictConfig, EnvBase, torch.device], Method] | None = None,
) -> TrainedRun:
    """A run directory's configuration, its method with the weights of its newest intact
    checkpoint, and its ``summary.json`` when it has one.

    Everything is checked before the method is built: the arguments, the directory, its
    ``config.yaml`` (read as ``resume=`` reads it,
    :func:`~torchrl_mcmc.recipes.resume.load_run_config`), the recipe that made it (told by
    the sections of its configuration, :func:`~torchrl_mcmc.recipes.methods.recipe_of`; not by
    ``method``, a free name), its checkpoint and its ``summary.json``; the checkpoint must then
    fit the networks built (:func:`~torchrl_mcmc.recipes.resume.checkpoint_mismatches`).

    Args:
        run_dir: the run directory (``config.yaml``, ``checkpoints/``...).
        device: where the method's networks live: ``auto`` (CUDA when present), ``cpu``,
            ``cuda`` or ``cuda:N`` naming a CUDA device torch sees (the rule of the ``device``
            config key), or a ``torch.device`` of these.
        method_cls: the method, built as ``method_cls(cfg, env, device)``; by default the one of
            the recipe that made the run. A recipe's method (or a subclass of one) must be given
            its recipe's configuration
            (:func:`~torchrl_mcmc.recipes.methods.method_fit_problem`: ``SAC`` loads a ``sac``
            run, not a ``bon_sac`` one).

    Raises:
        TypeError: ``run_dir`` is no path, or ``method_cls`` is not callable.
        ConfigError: ``device`` is none this machine has; ``run_dir`` does not exist, is a
            file, or holds no run (no ``config.yaml``); its ``config.yaml`` is no run's
            configuration (unreadable, empty, not YAML, not a mapping, no ``method``...) or, for
            ``method_cls=None``, has none of the recipes' sections; ``method_cls`` reads a
            section the run's configuration lacks; its ``summary.json`` is unreadable or no
            JSON object; its checkpoint does not fit the networks the configuration builds.
            Each names the argument, its value and what is allowed.
        CheckpointError: the run has no checkpoint yet (nothing to load), or none of its
            checkpoints can be read (each is named).

    Examples:
        A run trained from Python, then loaded back (in another process, say)::

            from torchrl_mcmc.recipes import SAC, compose_config, load_run, train

            run = train(compose_config("sac", ["preset=smoke", "env=Pendulum-v1"]), SAC)
            trained = load_run(run.path)
            trained.frames, trained.summary["final_return"]  # 400, and the run's result
            trained.rollout(max_steps=5).shape  # torch.Size([5])
    """
    if not isinstance(run_dir, str | os.PathLike):
        raise TypeError(
            f"run_dir must be a run directory's path (a str or a pathlib.Path), got "
            f"run_dir={run_dir!r} ({type(run_dir).__name__})."
        )
    if method_cls is not None and not callable(method_cls):
        known = ", ".join(cls.__name__ for cls in METHODS.values())
        raise TypeError(
            "method_cls must be None (the recipe's method) or a method class, called as "
            f"method_cls(cfg, env, device): one of {known} or a subclass; got "
            f"method_cls={method_cls!r} ({type(method_cls).__name__})."
        )
    training_device = _device(device)
    shown = f"run_dir={str(run_dir)!r}"
    path = Path(run_dir).expanduser().resolve()
    if not path.exists():
        raise ConfigError(f"{shown}: no such folder ({path} does not exist).")
    if not path.is_dir():
        hint = (
            f" (its folder {path.parent} is one)" if (path.parent / "config.yaml").is_file() else ""
        )
        raise ConfigError(
            f"{shown}: {path} is a file; must be a run directory (config.yaml, checkpoints/){hint}."
        )
    cfg_path = path / "config.yaml"
    if not cfg_path.exists():
        raise ConfigError(f"{shown}: no run there ({cfg_path} is missing).")
    try:
        cfg = load_run_config(cfg_path)
    except ConfigError as err:
        raise ConfigError(f"{shown}: {err}") from None
    method_cls = _method_for(cfg, method_cls, shown, cfg_path)
    if not has_checkpoint(path):
        raise CheckpointError(
            f"{shown}: the run has no checkpoint yet: nothing to load ({path / 'checkpoints'} "
            "holds no frames_*.pt file)."
        )
    summary = _summary(path / "summary.json", shown)
    # Read onto the CPU, then copied to ``device``: a CUDA run loads on a machine without one.
    try:
        state = load_checkpoint(path, map_location="cpu")
    except CheckpointError as err:
        raise CheckpointError(f"{shown}: {err} Nothing can be loaded from it.") from None
    frames = state.get("frames") if isinstance(state, dict) else None
    if not isinstance(frames, int) or isinstance(frames, bool):
        raise ConfigError(
            f"{shown}: the checkpoint {latest_checkpoint(path)} holds no frame count "
            f"(frames={frames!r}): it is no checkpoint of these recipes."
        )
    env = make_env(cfg)
    try:
        # Built with random weights, at once replaced: the caller's RNG stream is left as it was.
        with torch.random.fork_rng(devices=[]):
            method = method_cls(cfg, env, training_device)
    finally:
        env.close()
    saved = state.get("method")
    problems = checkpoint_mismatches(saved, method.state_dict())
    if problems:
        raise ConfigError(
            f"{shown}: the checkpoint {latest_checkpoint(path)} does not fit the networks "
            f"{cfg_path} builds with {_name(method_cls)}: {'; '.join(problems)}."
        )
    method.load_state_dict(saved)
    return TrainedRun(path, cfg, method, frames, summary)


def _device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` if the ``device`` config rule allows it here; a
    :class:`ConfigError` naming it otherwise."""
    value = str(device) if isinstance(device, torch.device) else device
    if isinstance(value, str):
        problem = device_rule(value)
    else:
        problem = "must be a str or a torch.device: auto, cpu, cuda or cuda:N"
    if problem is not None:
        raise ConfigError(f"device={show_value(value)}: {problem}.")
    return resolve_device(value)


def _method_for(
    cfg: DictConfig, method_cls: Callable[..., Method] | None, shown: str, cfg_path: Path
) -> Callable[..., Method]:
    """The method to build for the run of ``cfg``: by default the one of the recipe that made
    it (:func:`~torchrl_mcmc.recipes.methods.recipe_of`), else ``method_cls`` if ``cfg`` is its
    recipe's configuration; a :class:`ConfigError` otherwise."""
    recipe = recipe_of(cfg)
    if method_cls is None:
        if recipe is None:
            raise ConfigError(
                f"{shown}: cannot tell which recipe made the run: {cfg_path} (method "
                f"{show_value(cfg.method)}) has the sections of no recipe "
                f"({', '.join(sorted(cfg))}); pass method_cls, the method that trained it."
            )
        return METHODS[recipe]
    problem = method_fit_problem(cfg, method_cls)
    if problem is not None:
        allowed = f"{METHODS[recipe].__name__}, or None" if recipe is not None else "None"
        raise ConfigError(
            f"method_cls={_name(method_cls)}: {problem} ({cfg_path}); must be {allowed} (the "
            "method of the recipe that made the run)."
        )
    return method_cls


def _name(method_cls: Callable[..., Method]) -> str:
    return getattr(method_cls, "__name__", repr(method_cls))


def _summary(path: Path, shown: str) -> dict[str, Any] | None:
    """The run's ``summary.json`` at ``path``; ``None`` if there is none (a run that did not
    complete); a :class:`ConfigError` for one that is unreadable or no JSON object."""
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"{shown}: {path} cannot be read ({type(err).__name__}: {err})."
        ) from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{shown}: {path} is not JSON ({err}).") from None
    if not isinstance(summary, dict):
        raise ConfigError(
            f"{shown}: {path} holds {type(summary).__name__}, not a run's summary (a JSON object)."
        )
    return summary
