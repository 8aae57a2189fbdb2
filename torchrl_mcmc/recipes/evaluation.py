"""Deterministic evaluation of a policy, its learning curve and a video of one episode."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import gymnasium as gym
import torch
from omegaconf import DictConfig
from torch import nn
from torchrl.envs import EnvBase, SerialEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_mcmc.recipes.checkpoint import atomic_write
from torchrl_mcmc.recipes.factories import make_env


def make_eval_env(cfg: DictConfig) -> EnvBase:
    """``eval.episodes`` copies of the task as one batched env (TorchRL's ``SerialEnv``): an
    evaluation runs its episodes side by side, one policy call per step for all of them,
    instead of one after another (on CPU, acting and the env wrappers' overhead are paid per
    call, not per state)."""
    return SerialEnv(cfg.eval.episodes, functools.partial(make_env, cfg))


@torch.no_grad()
def episode_returns(policy: nn.Module, env: EnvBase, max_steps: int) -> torch.Tensor:
    """The return of one deterministic-mode episode of at most ``max_steps`` steps in each of
    the batched ``env``'s sub-envs (:func:`make_eval_env`), one value per sub-env.

    The episodes run side by side. One that ends stops stepping while the others go on
    (TorchRL's partial steps), and the evaluation stops when all have ended: each episode's
    return is its own, counted once, as if the episodes ran one after another.
    """
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = env.rollout(
            max_steps, policy, break_when_any_done=False, break_when_all_done=True
        )
    # After an episode ends, the rollout repeats its last step: the running sum (RewardSum)
    # at the last index is each episode's return.
    return rollout["next", "episode_reward"][..., -1, :].reshape(-1)


def evaluate(policy: nn.Module, env: EnvBase, max_steps: int) -> float:
    """Mean return of one deterministic-mode episode in each of the batched ``env``'s sub-envs
    (:func:`episode_returns`)."""
    return episode_returns(policy, env, max_steps).mean().item()


def record_video(
    policy: nn.Module, cfg: DictConfig, path: str | Path, max_steps: int | None = None
) -> None:
    """One deterministic episode of at most ``max_steps`` steps (default
    ``cfg.env.max_episode_steps``) rendered to a GIF at ``path``.

    MuJoCo tasks render with OpenGL: on a machine without a display, set ``MUJOCO_GL=egl`` (or
    ``osmesa``) before Python starts. :func:`video_problem` tells beforehand whether this works.
    """
    import imageio.v2 as imageio

    env = make_env(cfg, from_pixels=True)
    frames = []
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.reset()
        for _ in range(cfg.env.max_episode_steps if max_steps is None else max_steps):
            td = env.step(policy(td))
            frames.append(env.base_env._env.render())
            if td["next", "done"].any():
                break
            td = td["next"]
    env.close()
    imageio.mimsave(path, frames, duration=1 / 30)


def video_problem(cfg: DictConfig) -> str | None:
    """Why :func:`record_video` cannot render ``cfg.env.name`` in this process, or ``None``
    when a frame renders: what ``eval.video=true`` is checked with before a run trains.

    A MuJoCo task needs a working OpenGL backend (``MUJOCO_GL``, read when MuJoCo is first
    imported); a classic-control one, pygame.
    """
    env = None
    try:
        env = make_env(cfg, from_pixels=True)
        env.reset()
        env.base_env._env.render()
    except Exception as err:  # GL and pygame fail in many ways: any failure is the answer
        reason = f"{type(err).__name__}: {err}".strip(": ")
        if "mujoco" not in str(gym.spec(cfg.env.name).entry_point):
            return f"eval.video=true: {cfg.env.name} cannot be rendered here ({reason})."
        return (
            f"eval.video=true: {cfg.env.name} cannot be rendered here ({reason}). MuJoCo "
            f"renders with OpenGL (MUJOCO_GL={os.environ.get('MUJOCO_GL', '<unset>')}): "
            "without a display, start the run with MUJOCO_GL=egl (or MUJOCO_GL=osmesa, "
            "software rendering), or set eval.video=false."
        )
    finally:
        if env is not None:
            env.close()
    return None


def plot_curve(history: list[dict[str, float]], path: Path, title: str) -> None:
    """The evaluation returns of ``history`` (``{"frames", "eval_return"}`` rows) against
    frames, to a PNG that replaces ``path`` atomically (a viewer never reads half a file)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a training run may be on a headless machine
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["frames"] for h in history], [h["eval_return"] for h in history], marker="o")
    ax.set_xlabel("environment frames")
    ax.set_ylabel("evaluation return (deterministic)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)  # also when the write fails: pyplot would keep the figure open
