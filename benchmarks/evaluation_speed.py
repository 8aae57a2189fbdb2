"""Evaluation's cost: the scripts' batched evaluation against episodes one after another.

    python benchmarks/evaluation_speed.py                  # HalfCheetah-v4, 10 x 300 steps
    python benchmarks/evaluation_speed.py --steps 1000 --methods sac hmc_sac

Each script's policy (untrained, deterministic mode, 1 thread) acts in ``eval.episodes``
episodes of ``--steps`` steps twice: one episode after another in one env (how evaluation ran
before it was batched), then side by side in the scripts' batched env
(:func:`~torchrl_mcmc.recipes.evaluation.make_eval_env`). HalfCheetah's episodes never end
early, so both make the same number of env steps. Writes
``benchmarks/results/evaluation_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_mcmc.recipes import HMCSAC, LDTD3, SAC, TD3, BestOfNSAC, compose_config
from torchrl_mcmc.recipes.evaluation import evaluate, make_eval_env
from torchrl_mcmc.recipes.factories import make_env, set_threads
from torchrl_mcmc.recipes.provenance import provenance

OUTPUT = Path(__file__).resolve().parent / "results" / "evaluation_speed.json"
METHODS = {"sac": SAC, "hmc_sac": HMCSAC, "bon_sac": BestOfNSAC, "td3": TD3, "ld_td3": LDTD3}

logger = logging.getLogger("benchmarks.evaluation_speed")


@torch.no_grad()
def one_by_one(policy: torch.nn.Module, env, episodes: int, steps: int) -> None:
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(episodes):
            env.rollout(steps, policy, break_when_any_done=True)


def time_method(name: str, env_name: str, steps: int) -> dict[str, float]:
    cfg = compose_config(name, [f"env={env_name}"])
    spec_env = make_env(cfg)
    policy = METHODS[name](cfg, spec_env, torch.device("cpu")).policy
    spec_env.close()
    single, batched = make_env(cfg), make_eval_env(cfg)
    single.set_seed(0)
    batched.set_seed(0)
    start = time.perf_counter()
    one_by_one(policy, single, cfg.eval.episodes, steps)
    sequential_s = time.perf_counter() - start
    start = time.perf_counter()
    evaluate(policy, batched, steps)
    batched_s = time.perf_counter() - start
    single.close()
    batched.close()
    env_steps = cfg.eval.episodes * steps
    return {
        "episodes": cfg.eval.episodes,
        "one_by_one_ms_per_env_step": 1e3 * sequential_s / env_steps,
        "batched_ms_per_env_step": 1e3 * batched_s / env_steps,
        "speedup": sequential_s / batched_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v4")
    parser.add_argument("--steps", type=int, default=300, help="steps per episode")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(1)
    results = {}
    for name in args.methods:
        results[name] = time_method(name, args.env, args.steps)
        logger.info(
            "%-8s one by one %.2f ms/env-step, batched %.2f ms/env-step: %.2fx",
            name,
            results[name]["one_by_one_ms_per_env_step"],
            results[name]["batched_ms_per_env_step"],
            results[name]["speedup"],
        )
    record = {
        "env": args.env,
        "steps_per_episode": args.steps,
        "threads": 1,
        "policies": "untrained, deterministic mode, eager",
        "results": results,
        **provenance(),
    }
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    logger.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
