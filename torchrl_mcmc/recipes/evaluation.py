"""Deterministic evaluation of a policy, its learning curve and a video of one episode."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_mcmc.recipes.factories import make_env


@torch.no_grad()
def evaluate(policy: nn.Module, env: EnvBase, episodes: int, max_steps: int) -> float:
    """Mean return of ``episodes`` deterministic-mode episodes of at most ``max_steps`` steps."""
    returns = []
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(episodes):
            rollout = env.rollout(max_steps, policy, break_when_any_done=True)
            returns.append(rollout["next", "reward"].sum().item())
    return float(np.mean(returns))


def record_video(policy: nn.Module, cfg: DictConfig, path: Path) -> None:
    """One deterministic episode rendered to a GIF (needs ``MUJOCO_GL=egl`` for MuJoCo)."""
    import imageio.v2 as imageio

    env = make_env(cfg, from_pixels=True)
    frames = []
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.reset()
        for _ in range(cfg.env.max_episode_steps):
            td = env.step(policy(td))
            frames.append(env.base_env._env.render())
            if td["next", "done"].any():
                break
            td = td["next"]
    env.close()
    imageio.mimsave(path, frames, duration=1 / 30)


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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
