"""Is our SAC's level the algorithm's or our pipeline's? A SAC without TorchRL, to compare.

``examples/sac.py`` is TorchRL's ``SACLoss`` inside our recipes (collector, replay buffer,
evaluation, batched updates). If it sits below the published SAC on a task, the question is
whether the same algorithm, written apart from all of that, does better here, on this machine's
Gymnasium and MuJoCo. This script is that SAC, in plain PyTorch on a plain Gymnasium env, with
the hyperparameters our recipes use (``torchrl_mcmc/recipes/config/common.yaml``: 256 x 256
ReLU networks, Adam 3e-4 for actor, critics and temperature, batch 256, discount 0.99, target
rate 0.005, 5,000 random frames, temperature from 1 tuned to entropy ``-|A|``, twin critics) and
two update schedules:

* ``--schedule step``: one update after every environment step, critic, then actor, then
  temperature, each on the critic just updated (the published baselines' schedule);
* ``--schedule batch``: 1,000 frames collected with a fixed policy, then 1,000 updates (ours).

The evaluation is ours too: every 10,000 frames, 10 episodes with the squashed mean action, on
an environment seeded apart from training.

    python benchmarks/reference_sac.py --env Hopper-v4 --seed 0
    python benchmarks/reference_sac.py --env Hopper-v4 --seed 0 --schedule batch

Writes ``benchmarks/results/reference_sac/<env>_<variant>_seed<N>.json`` (the variant names
what differs from our hyperparameters): the evaluations, the last quarter's temperature and
entropy, and the wall-clock time. ``--summarize`` trains nothing and writes
``benchmarks/results/reference_sac.json``: each variant's last evaluations beside ours.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger("reference_sac")

RESULTS = Path(__file__).parent / "results" / "reference_sac"


def mlp(in_features: int, out_features: int, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_features),
    )


class Actor(nn.Module):
    """A tanh-squashed Gaussian on the action box; ``log_std`` kept in [-5, 2]."""

    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 2 * len(low))
        self.register_buffer("centre", torch.as_tensor((high + low) / 2, dtype=torch.float32))
        self.register_buffer("half_width", torch.as_tensor((high - low) / 2, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action and its log-density (tanh and box scaling included)."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = -5.0 + 3.5 * (torch.tanh(log_std) + 1.0)
        u = mean + log_std.exp() * torch.randn_like(mean)
        log_prob = (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std).sum(-1)
        log_prob = log_prob - 0.5 * math.log(2 * math.pi) * u.shape[-1]
        # log(1 - tanh(u)^2) written stably: 2 (log 2 - u - softplus(-2u)).
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        log_prob = log_prob - self.half_width.log().sum()
        return self.centre + self.half_width * torch.tanh(u), log_prob

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self.net(obs).chunk(2, dim=-1)
        return self.centre + self.half_width * torch.tanh(mean)


class SAC:
    """Twin-critic SAC with a tuned temperature (the version without a value network)."""

    def __init__(
        self,
        env: gym.Env,
        lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        fixed_alpha: float | None = None,
    ) -> None:
        obs_dim = env.observation_space.shape[0]
        act_dim = env.action_space.shape[0]
        self.actor = Actor(obs_dim, env.action_space.low, env.action_space.high)
        self.critics = nn.ModuleList([mlp(obs_dim + act_dim, 1) for _ in range(2)])
        self.targets = copy.deepcopy(self.critics).requires_grad_(False)
        # Tuned from 1 unless fixed (some published SACs fix it, e.g. at 0.2).
        start = 0.0 if fixed_alpha is None else math.log(fixed_alpha)
        self.log_alpha = torch.tensor(start, requires_grad=fixed_alpha is None)
        self.target_entropy = -float(act_dim)
        self.gamma, self.tau = gamma, tau
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=lr)

    @staticmethod
    def _q(critics: nn.ModuleList, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], -1)
        return torch.stack([q(x).squeeze(-1) for q in critics])

    @torch.no_grad()
    def critic_target(
        self, rew: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor
    ) -> torch.Tensor:
        """``r + gamma * (min target Q - alpha log pi)`` at a fresh next action; ``r`` where
        the episode terminated (a time limit is not a termination: it bootstraps)."""
        next_act, next_logp = self.actor(next_obs)
        next_q = self._q(self.targets, next_obs, next_act).min(0).values
        next_v = next_q - self.log_alpha.exp() * next_logp
        return rew + self.gamma * (1.0 - terminated) * next_v

    def update(self, obs, act, rew, next_obs, terminated) -> dict[str, float]:
        """One update of critics, actor, temperature and target critics, in that order."""
        alpha = self.log_alpha.exp().detach()
        target = self.critic_target(rew, next_obs, terminated)
        critic_loss = ((self._q(self.critics, obs, act) - target) ** 2).mean(-1).sum()
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        new_act, logp = self.actor(obs)
        # The actor's gradient flows through the critics to the action, not into their weights:
        # freezing them skips computing critic gradients that would only be discarded.
        self.critics.requires_grad_(False)
        q = self._q(self.critics, obs, new_act).min(0).values
        actor_loss = (alpha * logp - q).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        self.critics.requires_grad_(True)

        if self.log_alpha.requires_grad:
            alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
            self.alpha_opt.zero_grad()
            alpha_loss.backward()
            self.alpha_opt.step()

        with torch.no_grad():
            for p, tp in zip(self.critics.parameters(), self.targets.parameters(), strict=True):
                tp.lerp_(p, self.tau)
        return {"alpha": alpha.item(), "entropy": -logp.mean().item()}


def evaluate(actor: Actor, env_id: str, seed: int, episodes: int = 10) -> float:
    env = gym.make(env_id)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                act = actor.mean_action(torch.as_tensor(obs, dtype=torch.float32))
            obs, rew, terminated, truncated, _ = env.step(act.numpy())
            total += float(rew)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def _recipe_defaults() -> dict:
    """The recipes' own values (read from their config files, so they cannot drift apart)."""
    config = Path(__file__).parents[1] / "torchrl_mcmc" / "recipes" / "config"
    common, sac = (OmegaConf.load(config / f"{name}.yaml") for name in ("common", "sac"))
    return {
        "lr": common.optim.lr,
        "fixed_alpha": sac.sac.alpha_init if sac.sac.fixed_alpha else None,
        "random_frames": common.collector.init_random_frames,
        "batch_size": common.replay.batch_size,
    }


#: Our recipes' values; a run that changes one is named by it.
DEFAULTS = _recipe_defaults()


def variant_name(args: argparse.Namespace) -> str:
    """``step`` or ``batch``, then each hyperparameter that differs from our recipes',
    e.g. ``step_fixed_alpha0.2_lr0.001``, and ``--tag`` if given (say, another MuJoCo)."""
    changed = [f"{k}{getattr(args, k)}" for k, v in DEFAULTS.items() if getattr(args, k) != v]
    return "_".join([args.schedule, *changed, *([args.tag] if args.tag else [])])


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    env = gym.make(args.env)
    env.action_space.seed(args.seed)
    sac = SAC(env, lr=args.lr, fixed_alpha=args.fixed_alpha)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    size = args.frames
    buf_obs = np.zeros((size, obs_dim), np.float32)
    buf_next = np.zeros((size, obs_dim), np.float32)
    buf_act = np.zeros((size, act_dim), np.float32)
    buf_rew = np.zeros(size, np.float32)
    buf_term = np.zeros(size, np.float32)
    rng = np.random.default_rng(args.seed)

    def one_update() -> dict[str, float]:
        idx = rng.integers(0, frame + 1, args.batch_size)
        return sac.update(
            *(torch.as_tensor(b[idx]) for b in (buf_obs, buf_act, buf_rew, buf_next, buf_term))
        )

    obs, _ = env.reset(seed=args.seed)
    history, stats, start = [], [], time.perf_counter()
    for frame in range(args.frames):
        if frame < args.random_frames:
            act = env.action_space.sample()
        else:
            with torch.no_grad():
                act = sac.actor(torch.as_tensor(obs, dtype=torch.float32))[0].numpy()
        next_obs, rew, terminated, truncated, _ = env.step(act)
        buf_obs[frame], buf_act[frame], buf_rew[frame] = obs, act, rew
        buf_next[frame], buf_term[frame] = next_obs, float(terminated)
        obs = env.reset()[0] if terminated or truncated else next_obs
        if frame + 1 > args.random_frames:
            if args.schedule == "step":
                stats.append(one_update())
            elif (frame + 1) % args.batch_frames == 0:
                stats.extend(one_update() for _ in range(args.batch_frames))
        if (frame + 1) % args.eval_interval == 0:
            score = evaluate(sac.actor, args.env, seed=10_000 + args.seed)
            history.append({"frames": frame + 1, "eval_return": score})
            logger.info("%s seed %d: %d frames, return %.1f", args.env, args.seed, frame + 1, score)
    quarter = stats[-len(stats) // 4 :]
    return {
        "env": args.env,
        "seed": args.seed,
        "schedule": args.schedule,
        "variant": variant_name(args),
        "hyperparameters": {
            "lr": args.lr,
            "fixed_alpha": args.fixed_alpha,
            "random_frames": args.random_frames,
            "batch_size": args.batch_size,
        },
        "frames": args.frames,
        "eval_history": history,
        "updates": len(stats),
        "last_quarter": {k: float(np.mean([s[k] for s in quarter])) for k in quarter[0]},
        "wall_time_s": time.perf_counter() - start,
        "versions": {
            "torch": torch.__version__,
            "gymnasium": gym.__version__,
            "mujoco": __import__("mujoco").__version__,
        },
        "command": "python benchmarks/reference_sac.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if v not in (None, "") and k != "summarize"
        ),
    }


def summarize(results: Path = RESULTS, reps: int = 10_000) -> dict:
    """Every result file's last evaluation, grouped by environment and variant, beside our
    hyperparameters' (variant ``step``): the mean, its spread, and the difference of means
    with a 95% bootstrap interval (each group's seeds resampled on their own)."""
    groups: dict[str, dict[str, dict[int, float]]] = {}
    for path in sorted(results.glob("*.json")):
        run = json.loads(path.read_text())
        last = run["eval_history"][-1]
        if last["frames"] == run["frames"]:
            groups.setdefault(run["env"], {}).setdefault(run["variant"], {})[run["seed"]] = last[
                "eval_return"
            ]
    rng = np.random.default_rng(0)
    summary: dict[str, dict] = {}
    for env, variants in groups.items():
        ours = np.array(list(variants.get("step", {}).values()))
        summary[env] = {}
        for variant, by_seed in sorted(variants.items()):
            scores = np.array(list(by_seed.values()))
            row = {
                "seeds": sorted(by_seed),
                "last_evaluation": [by_seed[k] for k in sorted(by_seed)],
                "mean": float(scores.mean()),
                "std": float(scores.std(ddof=1)) if len(scores) > 1 else None,
            }
            if variant != "step" and len(scores) > 1 and len(ours) > 1:
                diffs = rng.choice(scores, (reps, len(scores))).mean(1) - rng.choice(
                    ours, (reps, len(ours))
                ).mean(1)
                row["minus_ours"] = {
                    "mean": float(scores.mean() - ours.mean()),
                    "ci95": [float(q) for q in np.quantile(diffs, [0.025, 0.975])],
                }
            summary[env][variant] = row
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedule", choices=("step", "batch"), default="step")
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--random-frames", type=int, default=DEFAULTS["random_frames"])
    parser.add_argument("--batch-frames", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--eval-interval", type=int, default=10_000)
    parser.add_argument(
        "--lr", type=float, default=DEFAULTS["lr"], help="actor, critics, temperature"
    )
    parser.add_argument("--fixed-alpha", type=float, default=None, help="default: tuned from 1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--tag", default="", help="appended to the result's name, e.g. what differs outside it"
    )
    parser.add_argument(
        "--summarize",
        action="store_true",
        help="train nothing: write the result files' summary to reference_sac.json",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.summarize:
        path = RESULTS.parent / "reference_sac.json"
        path.write_text(json.dumps(summarize(), indent=1) + "\n")
        logger.info("wrote %s", path)
        return
    torch.set_num_threads(args.threads)
    result = train(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.env}_{variant_name(args)}_seed{args.seed}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
