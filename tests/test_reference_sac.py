"""The TorchRL-free SAC used to check our SAC's level: its density, its target, its schedules."""

from __future__ import annotations

import argparse
import inspect
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

from benchmarks import reference_sac


def test_actor_log_prob_is_the_squashed_gaussian_density_on_the_box() -> None:
    torch.manual_seed(0)
    low, high = np.array([-2.0, 0.0, -1.0]), np.array([2.0, 0.5, 3.0])
    actor = reference_sac.Actor(5, low, high)
    obs = torch.randn(64, 5)
    torch.manual_seed(1)
    action, log_prob = actor(obs)
    mean, raw = actor.net(obs).chunk(2, dim=-1)
    std = (-5.0 + 3.5 * (torch.tanh(raw) + 1.0)).exp()
    centre = torch.as_tensor((high + low) / 2, dtype=torch.float32)
    half_width = torch.as_tensor((high - low) / 2, dtype=torch.float32)
    expected = TransformedDistribution(
        Normal(mean, std), [TanhTransform(), AffineTransform(centre, half_width)]
    )
    # Recompute the pre-squash sample from the same noise rather than inverting tanh.
    torch.manual_seed(1)
    u = mean + std * torch.randn_like(mean)
    torch.testing.assert_close(action, centre + half_width * torch.tanh(u))
    by_parts = Normal(mean, std).log_prob(u) - torch.log1p(-(torch.tanh(u) ** 2)) - half_width.log()
    torch.testing.assert_close(log_prob, by_parts.sum(-1), rtol=1e-4, atol=1e-4)
    inside = (action > torch.as_tensor(low) + 1e-3).all(-1) & (
        action < torch.as_tensor(high) - 1e-3
    ).all(-1)
    torch.testing.assert_close(
        log_prob[inside], expected.log_prob(action).sum(-1)[inside], rtol=1e-3, atol=1e-3
    )


def test_critic_target_bootstraps_except_where_the_episode_terminated() -> None:
    torch.manual_seed(0)
    sac = reference_sac.SAC(gym.make("Pendulum-v1"), gamma=0.9)
    rew, next_obs = torch.randn(8), torch.randn(8, 3)
    terminated = torch.tensor([1.0, 0.0] * 4)
    torch.manual_seed(2)
    target = sac.critic_target(rew, next_obs, terminated)
    torch.manual_seed(2)
    next_act, next_logp = sac.actor(next_obs)
    q = torch.stack([c(torch.cat([next_obs, next_act], -1)).squeeze(-1) for c in sac.targets])
    bootstrapped = rew + 0.9 * (q.min(0).values - next_logp)  # temperature 1 at the start
    torch.testing.assert_close(target[::2], rew[::2])
    torch.testing.assert_close(target[1::2], bootstrapped[1::2])


@pytest.mark.parametrize(("schedule", "updates"), [("step", 400), ("batch", 400)])
def test_schedules_make_one_update_per_frame_after_the_random_frames(
    tmp_path, monkeypatch, schedule: str, updates: int
) -> None:
    args = argparse.Namespace(
        env="Pendulum-v1",
        seed=0,
        schedule=schedule,
        frames=600,
        random_frames=200,
        batch_frames=100,
        batch_size=32,
        eval_interval=300,
        lr=3e-4,
        fixed_alpha=None,
        tag="",
    )
    result = reference_sac.train(args)
    assert result["updates"] == updates
    assert [e["frames"] for e in result["eval_history"]] == [300, 600]
    assert all(np.isfinite(e["eval_return"]) for e in result["eval_history"])
    assert result["variant"] == f"{schedule}_random_frames200_batch_size32"
    json.dumps(result)  # what main() writes


def test_a_fixed_temperature_stays_where_it_was_set() -> None:
    torch.manual_seed(0)
    sac = reference_sac.SAC(gym.make("Pendulum-v1"), fixed_alpha=0.2)
    batch = (torch.randn(16, 3), torch.rand(16, 1), torch.randn(16), torch.randn(16, 3))
    for _ in range(3):
        stats = sac.update(*batch, torch.zeros(16))
    assert stats["alpha"] == pytest.approx(0.2)
    assert sac.log_alpha.exp().item() == pytest.approx(0.2)


def test_summary_compares_each_variant_with_ours_on_finished_runs_only(tmp_path) -> None:
    def write(variant: str, seed: int, last: float, frames: int = 100) -> None:
        history = [{"frames": 50, "eval_return": 0.0}, {"frames": frames, "eval_return": last}]
        run = {"env": "E", "seed": seed, "schedule": "step", "variant": variant}
        run |= {"frames": 100, "eval_history": history}
        (tmp_path / f"E_{variant}_seed{seed}.json").write_text(json.dumps(run))

    for seed, last in enumerate([100.0, 200.0, 300.0]):
        write("step", seed, last)
    for seed, last in enumerate([1000.0, 3000.0]):
        write("step_lr0.001", seed, last)
    write("step_lr0.001", 2, 5.0, frames=50)  # interrupted: its last evaluation is not at 100
    summary = reference_sac.summarize(tmp_path, reps=2000)["E"]
    assert summary["step"]["last_evaluation"] == [100.0, 200.0, 300.0]
    assert summary["step"]["mean"] == pytest.approx(200.0)
    assert summary["step"]["std"] == pytest.approx(100.0)
    assert "minus_ours" not in summary["step"]
    other = summary["step_lr0.001"]
    assert other["seeds"] == [0, 1] and other["mean"] == pytest.approx(2000.0)
    assert other["minus_ours"]["mean"] == pytest.approx(1800.0)
    low, high = other["minus_ours"]["ci95"]
    # Resampled means: ours within [100, 300], theirs within [1000, 3000].
    assert 700.0 <= low < 1800.0 < high <= 2900.0


def test_defaults_are_what_the_sac_recipe_composes() -> None:
    # The reference reads the config files directly (it must not import the package it checks);
    # Hydra's composition, with every override a recipe file makes, must agree with it.
    from torchrl_mcmc.recipes import compose_config

    cfg = compose_config("sac", [])
    assert {
        "lr": cfg.optim.lr,
        "fixed_alpha": cfg.sac.alpha_init if cfg.sac.fixed_alpha else None,
        "random_frames": cfg.collector.init_random_frames,
        "batch_size": cfg.replay.batch_size,
    } == reference_sac.DEFAULTS
    # The values the reference fixes in its signatures are the recipes' too.
    sac_defaults = inspect.signature(reference_sac.SAC).parameters
    assert sac_defaults["gamma"].default == cfg.optim.gamma
    assert sac_defaults["tau"].default == pytest.approx(1 - cfg.optim.polyak)
    hidden = inspect.signature(reference_sac.mlp).parameters["hidden"].default
    assert list(cfg.network.hidden) == [hidden, hidden] and cfg.network.activation == "relu"
