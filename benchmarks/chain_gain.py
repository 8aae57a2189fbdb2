"""Is the chain's critic gain real? The critic's and the environment's verdict on refined actions.

For a trained run of ``ld_td3`` or ``hmc_sac`` on Pendulum-v1 or a Gymnasium MuJoCo task (its
run directory, last checkpoint),
at states visited by the deterministic actor, this compares two gains of the refined action
``aK`` over the policy's own action ``a0`` (``K = 0``, the same networks):

* the **critic gain** ``Q(s, aK) - Q(s, a0)`` (the twins' minimum), what the chain climbs and
  the losses log as ``critic_gain``;
* the **true gain** ``G(s, aK) - G(s, a0)``: the discounted return of taking that first action
  and then following the deterministic actor, by rolling the environment out from the restored
  state (Pendulum's ``(theta, theta_dot)`` and MuJoCo's ``(qpos, qvel)`` restore exactly) to
  the episode's end, or for ``--horizon`` steps: on MuJoCo's 1000-step episodes 300 steps
  keep the run short and leave out discounted weight ``gamma ** 300`` (5% at 0.99) of the
  rest, for both actions alike.

A chain that climbs into actions the critic overrates shows a critic gain with no true gain.
Deterministic throughout (deterministic actor, deterministic dynamics), so one rollout per
action is exact. Exact is not noiseless, though: a MuJoCo rollout is chaotic, and a move of a
few thousandths changes a 300-step return by tens. So each state also gets a **null move**:
``a0`` moved by the chain's own per-dimension distances ``|aK - a0|`` with random signs (clipped
to the action bounds). Its true gain is what a move of the chain's size reads by chance; the
chain's direction counts only where the paired difference, chain minus null, is above zero.

Whole episodes answer the same question for the agent as it is evaluated: ``--episodes N``
(default 10) deterministic episodes of the actor with its chain and of its policy alone
(``K = 0``), from the same N initial states (the evaluation's seeded batched env), paired by
episode. One action's gain is small and the rollout chaotic; an episode refines every action.

    python benchmarks/chain_gain.py runs/benchmarks/QL/ld_td3_fixedbeta/Pendulum-v1/seed0
    python benchmarks/chain_gain.py runs/benchmarks/SL/ld_td3/HalfCheetah-v4/seed0 --horizon 300
    python benchmarks/chain_gain.py --summarize benchmarks/results/chain_gain/*.json

Writes ``benchmarks/results/chain_gain/<method>_<env>_seed<N>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_mcmc.recipes import HMCSAC, LDTD3, make_env
from torchrl_mcmc.recipes.checkpoint import load_checkpoint
from torchrl_mcmc.recipes.evaluation import episode_returns, make_eval_env
from torchrl_mcmc.recipes.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "chain_gain"

logger = logging.getLogger("benchmarks.chain_gain")


def _portable(path: Path) -> str:
    """``path`` relative to the repository when inside it (the same run from any checkout)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _act(module, obs: np.ndarray) -> np.ndarray:
    td = TensorDict({"observation": torch.as_tensor(obs, dtype=torch.float32)}, batch_size=[])
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        return module(td)["action"].numpy().astype(np.float64)


def _state(env: gym.Env) -> np.ndarray:
    """The simulator's full state: MuJoCo's ``(qpos, qvel)``, or Pendulum's ``state``."""
    sim = env.unwrapped
    if hasattr(sim, "data"):
        return np.concatenate([sim.data.qpos, sim.data.qvel])
    return np.array(sim.state, dtype=np.float64)


def _restore(env: gym.Env, state: np.ndarray) -> np.ndarray:
    """Resets ``env`` (its time limit too), puts ``state`` back and returns its observation."""
    env.reset()
    sim = env.unwrapped
    if hasattr(sim, "data"):
        sim.set_state(state[: sim.model.nq], state[sim.model.nq :])
    else:
        sim.state = state.copy()
    return sim._get_obs().astype(np.float32)


def _return(
    env: gym.Env, state: np.ndarray, first: np.ndarray, actor, gamma: float, horizon: int | None
) -> float:
    """Discounted return of ``first`` from ``state``, then the deterministic ``actor``, to the
    episode's end or for ``horizon`` steps."""
    _restore(env, state)
    obs, reward, terminated, truncated, _ = env.step(first)
    total, discount, steps = reward, gamma, 1
    while not (terminated or truncated or steps == horizon):
        obs, reward, terminated, truncated, _ = env.step(_act(actor, obs))
        total += discount * reward
        discount *= gamma
        steps += 1
    return float(total)


def null_action(
    a0: np.ndarray, a_k: np.ndarray, low: np.ndarray, high: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The null move: ``a0`` moved by the chain's distance in each dimension, ``|aK - a0|``,
    in a random direction (independent random signs), clipped to ``[low, high]``."""
    signs = rng.choice(np.array([-1.0, 1.0]), size=a0.shape)
    return np.clip(a0 + signs * np.abs(a_k - a0), low, high)


def _bootstrap_ci(values: np.ndarray, resamples: int, seed: int) -> list[float]:
    """95% percentile bootstrap interval of the mean, resampling the states."""
    picks = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    return [float(q) for q in np.percentile(values[picks].mean(axis=1), [2.5, 97.5])]


def summarize(rows: list[dict], resamples: int = 10_000, seed: int = 0) -> dict:
    """The verdicts over the states: means, the true gain's spread, and a 95% percentile
    bootstrap interval of its mean (the rollouts' spread is wide next to the critic's gain, so
    the interval says whether the states resolve the gain at all). Rows measured with the null
    move (every file written since it exists) add its gains and the paired chain-minus-null
    difference with its interval, the states resampled together."""
    critic = np.array([r["critic_gain"] for r in rows])
    true = np.array([r["true_gain"] for r in rows])
    null = {}
    if all("null_true_gain" in r for r in rows):
        null_true = np.array([r["null_true_gain"] for r in rows])
        null = {
            "null_critic_gain_mean": float(np.mean([r["null_critic_gain"] for r in rows])),
            "null_true_gain_mean": float(null_true.mean()),
            "null_true_gain_mean_ci95": _bootstrap_ci(null_true, resamples, seed),
            "chain_minus_null_mean": float((true - null_true).mean()),
            "chain_minus_null_ci95": _bootstrap_ci(true - null_true, resamples, seed),
        }
    return {
        "states": len(rows),
        "critic_gain_mean": float(critic.mean()),
        "true_gain_mean": float(true.mean()),
        "true_gain_mean_ci95": _bootstrap_ci(true, resamples, seed),
        "true_gain_median": float(np.median(true)),
        "true_gain_p5_p95": [float(q) for q in np.percentile(true, [5, 95])],
        "fraction_true_gain_negative": float((true < 0).mean()),
        "correlation": float(np.corrcoef(critic, true)[0, 1]) if true.std() > 0 else None,
        "action_move_mean": float(np.mean([r["move"] for r in rows])),
        **null,
    }


def compare_episodes(
    chain: np.ndarray, alone: np.ndarray, resamples: int = 10_000, seed: int = 0
) -> dict:
    """Whole-episode returns of the actor with its chain and of its policy alone, paired by
    initial state: both means and the mean of the paired difference with its 95% percentile
    bootstrap interval (the episodes resampled together)."""
    difference = chain - alone
    return {
        "episodes": len(chain),
        "chain_returns": chain.tolist(),
        "policy_alone_returns": alone.tolist(),
        "chain_mean": float(chain.mean()),
        "policy_alone_mean": float(alone.mean()),
        "chain_minus_policy_alone_mean": float(difference.mean()),
        "chain_minus_policy_alone_ci95": _bootstrap_ci(difference, resamples, seed),
    }


def _episodes(cfg, actor, policy, episodes: int, seed: int) -> dict:
    """:func:`compare_episodes` of ``episodes`` deterministic episodes each, both from the
    evaluation env seeded with ``seed`` (the same initial states)."""
    cfg = OmegaConf.merge(cfg, {"eval": {"episodes": episodes}})
    returns = []
    for module in (actor, policy):
        env = make_eval_env(cfg)
        env.set_seed(seed)
        try:
            returns.append(episode_returns(module, env, cfg.env.max_episode_steps).double().numpy())
        finally:
            env.close()
    return {"seed": seed, **compare_episodes(*returns)}


def resummarize(paths: list[Path]) -> None:
    """Recomputes the summary of result files from their per-state rows (after a change of
    :func:`summarize`; the rollouts need the run's checkpoint, the summary does not)."""
    for path in paths:
        result = json.loads(path.read_text())
        result["summary"] = summarize(result["rows"])
        path.write_text(json.dumps(result, indent=1))
        logger.info("%s: %s", path, json.dumps(result["summary"]))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, nargs="?", help="the trained run to measure")
    parser.add_argument(
        "--summarize",
        type=Path,
        nargs="+",
        metavar="RESULT",
        help="instead: recompute these result files' summaries from their rows",
    )
    parser.add_argument("--states", type=int, default=64, help="states to compare at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--horizon", type=int, default=None, help="rollout steps (default: to the episode's end)"
    )
    parser.add_argument(
        "--episodes",
        type=int,
        default=10,
        help="whole episodes with the chain and with the policy alone (0: none)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the result file")
    args = parser.parse_args(argv)
    if args.episodes < 0:
        parser.error(f"--episodes must be an integer >= 0, got {args.episodes}")
    if (args.run_dir is None) == (args.summarize is None):
        parser.error("give either a run directory or --summarize RESULT [RESULT ...]")
    if args.summarize:
        resummarize(args.summarize)
        return 0
    torch.set_num_threads(1)

    cfg = OmegaConf.load(args.run_dir / "config.yaml")
    method_cls = LDTD3 if "flow" in cfg else HMCSAC
    spec_env = make_env(cfg)
    method = method_cls(cfg, spec_env, torch.device("cpu"))
    checkpoint = load_checkpoint(args.run_dir)
    method.load_state_dict(checkpoint["method"])
    actor = method.actor
    base = actor.policy  # the policy alone: a0 (TD3's action; HMC's deterministic mode)

    # States the deterministic actor visits, from seeded starts.
    env = gym.make(cfg.env.name)
    rng = np.random.default_rng(args.seed)
    states = []
    episode = 0
    while len(states) < args.states:
        obs, _ = env.reset(seed=args.seed + episode)
        episode += 1
        visited = []
        for _ in range(cfg.env.max_episode_steps):
            visited.append(_state(env))
            obs, _, terminated, truncated, _ = env.step(_act(actor, obs))
            if terminated or truncated:
                break
        picks = rng.choice(len(visited), size=min(16, len(visited)), replace=False)
        states.extend(visited[i] for i in picks)
    states = states[: args.states]

    gamma = float(cfg.optim.gamma)
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    rows = []
    for state in states:
        obs = _restore(env, state)
        a0, a_k = _act(base, obs), _act(actor, obs)
        a_null = null_action(a0, a_k, low, high, rng)
        td = TensorDict({"observation": torch.as_tensor(obs).expand(3, -1)}, batch_size=[3])
        with torch.no_grad():
            actions = torch.as_tensor(np.stack([a0, a_k, a_null]), dtype=torch.float32)
            q = actor.critic_value(td, actions)
        g0, g_k, g_null = (
            _return(env, state, a, actor, gamma, args.horizon) for a in (a0, a_k, a_null)
        )
        rows.append(
            {
                "critic_gain": float(q[1] - q[0]),
                "true_gain": g_k - g0,
                "null_critic_gain": float(q[2] - q[0]),
                "null_true_gain": g_null - g0,
                "move": float(np.abs(a_k - a0).max()),
            }
        )
    summary = summarize(rows)
    logger.info("%s", json.dumps(summary))
    episodes = {}
    if args.episodes:
        episodes = {"episodes": _episodes(cfg, actor, base, args.episodes, args.seed)}
        logger.info("%s", json.dumps(episodes))
    out = {
        **provenance(),
        "run_dir": _portable(args.run_dir),
        "checkpoint_frames": checkpoint.get("frames"),
        "method": cfg.method,
        "seed": int(cfg.seed),
        "protocol": {
            "states": args.states,
            "state_seed": args.seed,
            "gamma": gamma,
            "rollout": "first action, then the deterministic actor, "
            + (f"for {args.horizon} steps" if args.horizon else "to the episode's end"),
            "null_move": "a0 + random signs * |aK - a0| per dimension, clipped to the bounds",
        },
        "summary": summary,
        **episodes,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{cfg.method}_{cfg.env.name}_seed{cfg.seed}.json"
    path.write_text(json.dumps(out, indent=1))
    logger.info("wrote %s", path)
    spec_env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
