"""Update cost and collection throughput of each method against its TorchRL baseline.

BENCHMARKS.md §1. One process builds every method with the same networks (policy and twin
critics 256x256 ReLU MLPs, built by the example scripts' own factories in ``examples/utils.py``
on HalfCheetah-v4's specs; gate nets 2x16), the same batches (256 transitions with
HalfCheetah-v4 shapes: obs 17, act 6) and the same optimisers, warms them up, then times full
updates in interleaved rounds, so that the noise of a shared machine hits every method alike.
A *full update* is everything a training loop does per sampled batch:

* ``sac``: TorchRL ``SACLoss`` (critic, actor, alpha), three Adam steps, ``SoftUpdate``;
* ``hmc_alternating``: ``HMCLoss`` as in eq. 11: a critic step, a step on ``theta`` with ``h``
  fixed, then a step on ``h`` with the new ``theta``; ``SoftUpdate``; one PID update;
* ``hmc_joint``: ``HMCLoss(update_mode="joint")``: one critic and one ``(theta, h)`` step,
  ``SoftUpdate``, one PID update;
* ``td3``: TorchRL ``TD3Loss`` (actor updated at every step: ``policy_delay = 1``), two Adam
  steps, ``SoftUpdate``.

Collection throughput runs each method's acting policy in a TorchRL ``Collector`` on
HalfCheetah-v4 (interleaved batches after a warm-up batch) and also reports the policy's own
cost per action (batch 1, ``no_grad``), which is what the chain adds to each environment step.
Each policy is collected eagerly and, unless ``--no-compile-collection``, also with the
Collector's ``compile_policy=True`` (entries ``<policy>+compile``): at batch 1 a chain of
``K + 1`` critic-gradient evaluations is a few hundred tiny ops, whose dispatch overhead
``torch.compile`` removes.

Results go to ``benchmarks/results/update_speed.json``, rewritten after every stage so an
interrupted run keeps what it measured. ``--note`` appends the run's headline numbers to the
file's ``optimisations`` list (kept across runs), which documents how each code change moved
the numbers.

Usage::

    python -m benchmarks.update_speed                       # K = 5, all methods
    python -m benchmarks.update_speed --num-steps 1 3 5 10  # how the cost grows with K
    python -m benchmarks.update_speed --methods sac hmc_joint --skip-collection
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictSequential
from torch import nn
from torchrl.envs import DoubleToFloat, EnvBase, GymEnv, TransformedEnv
from torchrl.objectives import LossModule, SACLoss, SoftUpdate, TD3Loss

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable as a script from any directory

from examples.utils import (  # noqa: E402
    make_critic,
    make_deterministic_policy,
    make_stochastic_policy,
    make_td3_exploration,
)
from torchrl_mcmc import (  # noqa: E402
    HMCActor,
    HMCLoss,
    LangevinFlowActor,
    LangevinFlowLoss,
    PIDController,
)

logger = logging.getLogger("benchmarks.update_speed")

DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "update_speed.json"

ENV_NAME = "HalfCheetah-v4"
OBS_DIM, ACTION_DIM = 17, 6  # HalfCheetah-v4's shapes (checked against the env in make_env)
HIDDEN = (256, 256)  # policy and critics
GATE_HIDDEN = 16  # gate nets: 2 layers of 16 (paper §5)
LEARNING_RATE = 3e-4
TAU_EPS = 0.995  # SoftUpdate's eps (Polyak factor)
GAMMA = 0.99
HEADLINE_K = 5  # the protocol's K, used for the headline ratios and --note entries

#: The fields of the example scripts' config that their factories (examples/utils.py) read, at
#: the protocol's sizes: the benchmark builds its policies and critics with those factories,
#: so it times the very networks the training scripts train.
NETWORKS = {
    "network": {"hidden": list(HIDDEN), "activation": "relu", "default_scale": 1.0},
    "td3": {"exploration_noise": 0.1},  # TD3's collection noise (half-width units)
}


@dataclass
class Config:
    batch_size: int
    num_steps: int  # K of the chain (ignored by methods without one)
    env: EnvBase  # its specs shape the networks; only the collection benchmark steps it
    networks: DictConfig  # NETWORKS, as the factories read it


def make_env() -> EnvBase:
    """HalfCheetah-v4 with float32 observations, as collected (and as the networks are shaped)."""
    env = TransformedEnv(GymEnv(ENV_NAME), DoubleToFloat())
    if env.observation_spec["observation"].shape[-1] != OBS_DIM:
        raise RuntimeError(f"{ENV_NAME} observations are not {OBS_DIM}-dimensional.")
    if env.action_spec.shape[-1] != ACTION_DIM:
        raise RuntimeError(f"{ENV_NAME} actions are not {ACTION_DIM}-dimensional.")
    return env


# ------------------------------------------------------------------------------- networks
def make_hmc_actor(cfg: Config) -> HMCActor:
    """SAC's policy and critic (the examples' factories) refined by K gated leapfrog steps."""
    return HMCActor(
        make_stochastic_policy(cfg.networks, cfg.env),
        make_critic(cfg.networks, cfg.env),
        action_spec=cfg.env.action_spec,
        num_steps=cfg.num_steps,
        gate_hidden=GATE_HIDDEN,
    )


def make_ld_actor(cfg: Config) -> LangevinFlowActor:
    """TD3's policy and critic (the examples' factories) refined by K Langevin coupling layers
    (gate-sized 16-unit nets)."""
    return LangevinFlowActor(
        make_deterministic_policy(cfg.networks, cfg.env),
        make_critic(cfg.networks, cfg.env),
        state_dim=OBS_DIM,
        action_spec=cfg.env.action_spec,
        num_layers=max(cfg.num_steps, 1),
        hidden=GATE_HIDDEN,
    )


def _adam(params) -> torch.optim.Adam:
    return torch.optim.Adam(list(params), lr=LEARNING_RATE)


def _actor_critic_adams(loss: LossModule) -> list[torch.optim.Adam]:
    """Adam on a TorchRL loss's actor and on its critics (SAC, TD3)."""
    return [
        _adam(loss.actor_network_params.values(True, True)),
        _adam(loss.qvalue_network_params.values(True, True)),
    ]


def _step(optimisers: list[torch.optim.Optimizer]) -> None:
    for optimiser in optimisers:
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------- updates
UpdateFn = Callable[[TensorDictBase], None]


def _summed_update(
    loss: LossModule,
    loss_keys: tuple[str, ...],
    optimisers: list[torch.optim.Optimizer],
    pid: PIDController | None = None,
) -> UpdateFn:
    """One ``loss(batch)``, one backward of the sum of ``loss_keys``, one step of every
    optimiser, ``SoftUpdate`` (and one PID update of ``beta`` when given)."""
    target_updater = SoftUpdate(loss, eps=TAU_EPS)

    def update(batch: TensorDictBase) -> None:
        out = loss(batch)
        sum(out[key] for key in loss_keys).backward()
        _step(optimisers)
        target_updater.step()
        if pid is not None:
            # Once per policy iteration in a real loop; once per update here, as an upper bound.
            loss.beta = pid.update(out["policy_distance"])

    return update


def _eq11_update(
    loss: HMCLoss | LangevinFlowLoss,
    h_loss: Callable[[TensorDictBase], tuple[torch.Tensor, Any]],
    pid: PIDController,
) -> UpdateFn:
    """Eq. 11: a critic step, a step on ``theta`` with ``h`` fixed, then a step on ``h``
    (``h_loss``) with the new ``theta``; ``SoftUpdate``; one PID update."""
    target_updater = SoftUpdate(loss, eps=TAU_EPS)
    critic_optim = _adam(loss.critic_parameters())
    policy_optim = _adam(loss.policy_parameters())
    h_optim = _adam(loss.actor.flow.parameters())  # h: hmc_parameters() / flow_parameters()

    def update(batch: TensorDictBase) -> None:
        loss_qvalue, _ = loss.qvalue_loss(batch)
        loss_qvalue.backward()
        _step([critic_optim])
        loss_actor, metadata = loss.actor_loss(batch)
        loss_actor.backward()
        _step([policy_optim])
        loss_h, _ = h_loss(batch)
        loss_h.backward()
        _step([h_optim])
        target_updater.step()
        # Once per policy iteration in a real loop; once per update here, as an upper bound.
        loss.beta = pid.update(metadata["policy_distance"])

    return update


def sac_update(cfg: Config) -> UpdateFn:
    loss = SACLoss(
        make_stochastic_policy(cfg.networks, cfg.env),
        make_critic(cfg.networks, cfg.env),
        num_qvalue_nets=2,
        loss_function="l2",
    )
    loss.make_value_estimator(gamma=GAMMA)
    optimisers = [*_actor_critic_adams(loss), _adam([loss.log_alpha])]
    return _summed_update(loss, ("loss_actor", "loss_qvalue", "loss_alpha"), optimisers)


def _hmc_loss(cfg: Config, update_mode: str) -> tuple[HMCLoss, PIDController]:
    loss = HMCLoss(make_hmc_actor(cfg), update_mode=update_mode)
    loss.make_value_estimator(gamma=GAMMA)
    # Gains of the scale the tests use; the controller's cost does not depend on them.
    pid = PIDController(target=1.0, kp=0.5, ki=0.1, beta_init=1.0, beta_min=0.05, beta_max=20.0)
    return loss, pid


def hmc_alternating_update(cfg: Config) -> UpdateFn:
    loss, pid = _hmc_loss(cfg, "alternating")
    return _eq11_update(loss, loss.hmc_loss, pid)


def hmc_joint_update(cfg: Config) -> UpdateFn:
    loss, pid = _hmc_loss(cfg, "joint")
    optimisers = [
        _adam(loss.critic_parameters()),
        _adam([*loss.policy_parameters(), *loss.hmc_parameters()]),
    ]
    return _summed_update(loss, ("loss_actor", "loss_qvalue"), optimisers, pid)


def td3_update(cfg: Config) -> UpdateFn:
    loss = TD3Loss(
        make_deterministic_policy(cfg.networks, cfg.env),
        make_critic(cfg.networks, cfg.env),
        action_spec=cfg.env.action_spec,
        num_qvalue_nets=2,
        loss_function="l2",
    )
    loss.make_value_estimator(gamma=GAMMA)
    return _summed_update(loss, ("loss_actor", "loss_qvalue"), _actor_critic_adams(loss))


def ld_td3_update(cfg: Config) -> UpdateFn:
    # As td3_update: the policy (and here the flow) updated at every step (delay 1).
    loss = LangevinFlowLoss(make_ld_actor(cfg), loss_function="l2")
    loss.make_value_estimator(gamma=GAMMA)
    pid = PIDController(target=0.1, beta_init=1.0, beta_min=1e-3, beta_max=100.0)
    return _eq11_update(loss, loss.flow_loss, pid)


# ------------------------------------------------------------------------------- acting
def sac_policy(cfg: Config) -> nn.Module:
    return make_stochastic_policy(cfg.networks, cfg.env)


def hmc_policy(cfg: Config) -> nn.Module:
    # As in training: the loss hands its twin critics to the actor, which acts on their minimum.
    actor = make_hmc_actor(cfg)
    HMCLoss(actor)
    return actor


def td3_policy(cfg: Config) -> nn.Module:
    # As examples/td3.py: the deterministic policy, then TD3's Gaussian exploration noise.
    policy = make_deterministic_policy(cfg.networks, cfg.env)
    return TensorDictSequential(policy, make_td3_exploration(cfg.networks, cfg.env))


def ld_policy(cfg: Config) -> nn.Module:
    actor = make_ld_actor(cfg)
    LangevinFlowLoss(actor)  # hands its twin critics to the actor, as in training
    return actor


# ------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Method:
    """One entry of the benchmark.

    Attributes:
        build_update: ``cfg -> update(batch)``, one full update per call.
        baseline: the method whose cost this one is divided by in the ratio table.
        uses_num_steps: timed once per ``K`` of ``--num-steps`` (methods with a chain).
        build_policy: ``cfg -> acting policy`` for the collection benchmark (``None``: skip).
        policy_name: methods sharing an acting policy share one collection entry.
    """

    build_update: Callable[[Config], UpdateFn]
    baseline: str | None = None
    uses_num_steps: bool = False
    build_policy: Callable[[Config], nn.Module] | None = None
    policy_name: str | None = None


METHODS: dict[str, Method] = {
    "sac": Method(sac_update, build_policy=sac_policy, policy_name="sac"),
    "hmc_alternating": Method(
        hmc_alternating_update,
        baseline="sac",
        uses_num_steps=True,
        build_policy=hmc_policy,
        policy_name="hmc",
    ),
    "hmc_joint": Method(
        hmc_joint_update,
        baseline="sac",
        uses_num_steps=True,
        build_policy=hmc_policy,
        policy_name="hmc",
    ),
    "td3": Method(td3_update, build_policy=td3_policy, policy_name="td3"),
    "ld_td3": Method(
        ld_td3_update,
        baseline="td3",  # the ratio LD/TD3 of BENCHMARKS.md section 1
        uses_num_steps=True,  # K coupling layers
        build_policy=ld_policy,
        policy_name="ld",
    ),
}

#: the policy the collection ratios are taken against, per acting policy
POLICY_BASELINES = {"hmc": "sac", "ld": "td3"}


# ------------------------------------------------------------------------------- measuring
def make_batches(cfg: Config, count: int, generator: torch.Generator) -> list[TensorDict]:
    """Replay-buffer-like batches; every method sees the same ones in the same order."""
    low, high = cfg.env.action_spec.space.low, cfg.env.action_spec.space.high
    n = cfg.batch_size
    batches = []
    for _ in range(count):
        unit = torch.rand(n, ACTION_DIM, generator=generator)
        batches.append(
            TensorDict(
                {
                    "observation": torch.randn(n, OBS_DIM, generator=generator),
                    "action": low + (high - low) * unit,
                    "next": {
                        "observation": torch.randn(n, OBS_DIM, generator=generator),
                        "reward": torch.randn(n, 1, generator=generator),
                        "done": torch.zeros(n, 1, dtype=torch.bool),
                        "terminated": torch.zeros(n, 1, dtype=torch.bool),
                    },
                },
                batch_size=[n],
            )
        )
    return batches


def summarise(times_s: list[float]) -> dict[str, float]:
    ms = torch.tensor(times_s, dtype=torch.float64) * 1e3
    q1, median, q3 = torch.quantile(ms, torch.tensor([0.25, 0.5, 0.75], dtype=ms.dtype)).tolist()
    return {"median_ms": median, "iqr_ms": q3 - q1, "q1_ms": q1, "q3_ms": q3, "n": len(times_s)}


def time_updates(
    variants: dict[str, UpdateFn], batches: list[TensorDict], updates: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Median ms per update of each variant, timed in interleaved rounds."""
    names = list(variants)
    for name in names:
        for i in range(warmup):
            variants[name](batches[i % len(batches)])
        logger.info("warmed up %s", name)
    rounds = max(1, math.ceil(updates / 20))
    per_round = math.ceil(updates / rounds)
    times: dict[str, list[float]] = {name: [] for name in names}
    round_means: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        # Rotate the order so no variant always runs first (or right after the heaviest one).
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            update = variants[name]
            chunk = []
            for i in range(per_round):
                batch = batches[(r * per_round + i) % len(batches)]
                start = time.perf_counter()
                update(batch)
                chunk.append(time.perf_counter() - start)
            times[name].extend(chunk)
            round_means[name].append(sum(chunk) / len(chunk))
        logger.info("round %d/%d done", r + 1, rounds)
    stats = {}
    for name in names:
        stats[name] = summarise(times[name])
        stats[name]["_round_means"] = round_means[name]
    return stats


def paired_ratio(stats: dict[str, dict[str, Any]], name: str, baseline: str) -> float:
    """Median over rounds of (this round's mean / the baseline's mean in the same round)."""
    pairs = zip(stats[name]["_round_means"], stats[baseline]["_round_means"], strict=True)
    return float(torch.tensor([a / b for a, b in pairs]).median())


def time_acting(policy: nn.Module, iterations: int = 300) -> float:
    """Median ms of one action for one observation, as a collector calls the policy."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    td = TensorDict({"observation": torch.randn(1, OBS_DIM)}, batch_size=[1])
    times = []
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for i in range(iterations + 30):
            start = time.perf_counter()
            policy(td.clone())
            if i >= 30:
                times.append(time.perf_counter() - start)
    return summarise(times)["median_ms"]


COMPILED = "+compile"  # suffix of the entries collected with compile_policy=True


def time_collection(
    policies: dict[str, nn.Module], frames: int, frames_per_batch: int
) -> dict[str, dict[str, float]]:
    """Env frames/s of each policy in a TorchRL Collector on HalfCheetah-v4, interleaved.

    Names ending in ``+compile`` are collected with the Collector's ``compile_policy=True``
    (``torch.compile`` with default settings; its warm-up falls in the untimed first batch).
    """
    from torchrl.collectors import Collector

    collectors, iterators = {}, {}
    for i, (name, policy) in enumerate(policies.items()):
        env = make_env()
        env.set_seed(i)
        collectors[name] = Collector(
            env,
            policy,
            frames_per_batch=frames_per_batch,
            total_frames=-1,
            auto_register_policy_transforms=False,
            compile_policy=name.endswith(COMPILED),
        )
        iterators[name] = iter(collectors[name])
        next(iterators[name])  # warm-up batch, not timed
    rounds = max(1, math.ceil(frames / frames_per_batch))
    seconds = dict.fromkeys(policies, 0.0)
    counted = dict.fromkeys(policies, 0)
    for r in range(rounds):
        names = list(policies)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            batch = next(iterators[name])
            seconds[name] += time.perf_counter() - start
            counted[name] += batch.numel()
        logger.info("collection round %d/%d done", r + 1, rounds)
    for collector in collectors.values():
        collector.shutdown()
    return {
        name: {
            "frames": counted[name],
            "seconds": seconds[name],
            "fps": counted[name] / seconds[name],
        }
        for name in policies
    }


# ------------------------------------------------------------------------------- metadata
def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # a missing optional package is recorded as None
        return None


def metadata(argv: list[str], threads: int) -> dict[str, Any]:
    status = _git("status", "--porcelain")
    dirty = bool(status) if status is not None else None
    return {
        "command": shlex.join([sys.executable, "-m", "benchmarks.update_speed", *argv]),
        "git": {"commit": _git("rev-parse", "HEAD"), "dirty": dirty},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {
            name: _version(name)
            for name in ("torch", "torchrl", "tensordict", "gymnasium", "mujoco")
        },
        "python": platform.python_version(),
        "device": "cpu",
        "cpu_model": _cpu_model(),
        "cpu_count": torch.multiprocessing.cpu_count(),
        "threads": threads,
    }


class ResultFile:
    """The JSON result, rewritten after every stage; keeps the ``optimisations`` history."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        previous = {}
        if path.exists():
            try:
                previous = json.loads(path.read_text())
            except json.JSONDecodeError:
                logger.warning("%s is not valid JSON; its history is lost.", path)
        self.data = {**header, "status": "running"}
        for key in ("optimisations", "profile", "bounds"):
            if key in previous:
                self.data[key] = previous[key]

    def write(self, **updates: Any) -> None:
        self.data.update(updates)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)


# ------------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-steps", type=int, nargs="+", default=[HEADLINE_K], help="K values")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--updates", type=int, default=200, help="timed updates per variant")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="registry names")
    parser.add_argument("--collection-frames", type=int, default=5000, help="timed frames each")
    parser.add_argument("--frames-per-batch", type=int, default=500)
    parser.add_argument("--skip-collection", action="store_true")
    parser.add_argument(
        "--compile-collection",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also collect with Collector(compile_policy=True)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--note", default=None, help="append this run to 'optimisations'")
    return parser.parse_args(argv)


def select_methods(requested: list[str]) -> list[str]:
    unknown = [name for name in requested if name not in METHODS]
    if unknown:
        logger.error("unknown method(s) %s skipped; the registry has %s.", unknown, sorted(METHODS))
    selected = [name for name in dict.fromkeys(requested) if name in METHODS]
    if not selected:
        raise SystemExit(f"no known method in --methods {requested}; known: {sorted(METHODS)}")
    return selected


def variant_name(method: str, num_steps: int) -> str:
    return f"{method}@K={num_steps}" if METHODS[method].uses_num_steps else method


def format_table(update: dict[str, Any], collection: dict[str, Any] | None) -> str:
    lines = ["", "update cost (median ms per full update; ratio = method / baseline)"]
    lines.append(f"{'method':<24}{'median ms':>11}{'IQR ms':>9}{'ratio':>8}{'paired':>8}")
    for name, entry in update["methods"].items():
        ratio = update["ratios"].get(name)
        ratios = f"{ratio['ratio']:>8.2f}{ratio['paired']:>8.2f}" if ratio else f"{'-':>8}{'-':>8}"
        lines.append(f"{name:<24}{entry['median_ms']:>11.2f}{entry['iqr_ms']:>9.2f}{ratios}")
    if collection:
        lines += ["", "collection (HalfCheetah-v4 frames/s; act = ms per action at batch 1)"]
        lines.append(f"{'policy':<24}{'frames/s':>11}{'act ms':>9}")
        for name, entry in collection["policies"].items():
            act = f"{entry['act_ms']:>9.3f}" if entry["act_ms"] is not None else f"{'-':>9}"
            lines.append(f"{name:<24}{entry['fps']:>11.1f}{act}")
        lines += ["", "collection ratios (frames/s)"]
        lines += [f"{name:<32}{ratio:>8.2f}" for name, ratio in collection["ratios"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    methods = select_methods(args.methods)
    if args.updates < 200:
        logger.warning("--updates %d < 200: below the protocol's minimum.", args.updates)
    result = ResultFile(args.output, metadata(argv, torch.get_num_threads()))
    config = {
        "batch_size": args.batch_size,
        "num_steps": args.num_steps,
        "updates": args.updates,
        "warmup": args.warmup,
        "methods": methods,
        "hidden": list(HIDDEN),
        "gate_hidden": GATE_HIDDEN,
        "networks": "examples/utils.py factories (make_stochastic_policy, "
        "make_deterministic_policy, make_critic, make_td3_exploration) with "
        + json.dumps(NETWORKS),
        "obs_dim": OBS_DIM,
        "action_dim": ACTION_DIM,
        "seed": args.seed,
        "td3_policy_delay": 1,
        "hmc_alternating": "eq. 11: critic step, theta step (h fixed), h step (new theta)",
    }
    result.write(config=config)
    env = make_env()  # shapes every network (as the example scripts' env does)
    networks = OmegaConf.create(NETWORKS)

    # --- update cost: every (method, K) variant, interleaved in the same rounds
    torch.manual_seed(args.seed)
    variants: dict[str, UpdateFn] = {}
    baselines: dict[str, str] = {}
    for name in methods:
        method = METHODS[name]
        for num_steps in args.num_steps if method.uses_num_steps else [HEADLINE_K]:
            cfg = Config(args.batch_size, num_steps, env, networks)
            variants[variant_name(name, num_steps)] = method.build_update(cfg)
            if method.baseline in methods:
                baselines[variant_name(name, num_steps)] = method.baseline
            elif method.baseline is not None:
                logger.warning("%s's baseline %s is not selected: no ratio.", name, method.baseline)
    batches = make_batches(
        Config(args.batch_size, HEADLINE_K, env, networks),
        8,
        torch.Generator().manual_seed(args.seed),
    )
    stats = time_updates(variants, batches, args.updates, args.warmup)
    ratios = {
        name: {
            "baseline": baseline,
            "ratio": stats[name]["median_ms"] / stats[baseline]["median_ms"],
            "paired": paired_ratio(stats, name, baseline),
        }
        for name, baseline in baselines.items()
    }
    update = {
        "methods": {
            name: {k: v for k, v in entry.items() if not k.startswith("_")}
            for name, entry in stats.items()
        },
        "ratios": ratios,
        "ratio_note": "ratio: of medians; paired: median over rounds of per-round mean ratios",
    }
    result.write(update=update)

    # --- collection throughput (and the acting policy's own cost per action)
    collection = None
    if not args.skip_collection:
        torch.manual_seed(args.seed)
        cfg = Config(1, HEADLINE_K, env, networks)
        policies = {}
        for name in methods:
            method = METHODS[name]
            if method.build_policy is not None and method.policy_name not in policies:
                policies[method.policy_name] = method.build_policy(cfg)
                if args.compile_collection:
                    policies[method.policy_name + COMPILED] = method.build_policy(cfg)
        measured = time_collection(policies, args.collection_frames, args.frames_per_batch)
        for name, policy in policies.items():
            # The eager policy's own cost per action (compiled ones: see their frames/s).
            measured[name]["act_ms"] = None if name.endswith(COMPILED) else time_acting(policy)
        collection_ratios = {}
        for name, base in POLICY_BASELINES.items():
            for suffix, base_suffix in (("", ""), (COMPILED, ""), (COMPILED, COMPILED)):
                if name + suffix in measured and base + base_suffix in measured:
                    ratio = measured[name + suffix]["fps"] / measured[base + base_suffix]["fps"]
                    collection_ratios[f"{name}{suffix}/{base}{base_suffix}"] = ratio
        collection = {
            "env": ENV_NAME,
            "num_steps": HEADLINE_K,
            "frames_per_batch": args.frames_per_batch,
            "policies": measured,
            "ratios": collection_ratios,
        }
        result.write(collection=collection)

    if args.note:
        headline = {
            name: round(entry["median_ms"], 3)
            for name, entry in update["methods"].items()
            if "@K=" not in name or name.endswith(f"@K={HEADLINE_K}")
        }
        entry = {
            "note": args.note,
            "date": result.data["date"],
            "git": result.data["git"],
            "threads": result.data["threads"],
            "update_ms": headline,
            "update_ratio": {
                name: round(r["ratio"], 3) for name, r in ratios.items() if name in headline
            },
        }
        if collection:
            entry["act_ms"] = {
                k: round(v["act_ms"], 3)
                for k, v in collection["policies"].items()
                if v["act_ms"] is not None
            }
            entry["collection_fps"] = {
                k: round(v["fps"], 1) for k, v in collection["policies"].items()
            }
            entry["collection_ratio"] = {k: round(v, 3) for k, v in collection["ratios"].items()}
        result.data.setdefault("optimisations", []).append(entry)
    result.write(status="complete")
    print(format_table(update, collection))


if __name__ == "__main__":
    main()
