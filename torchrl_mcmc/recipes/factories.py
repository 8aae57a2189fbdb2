"""Factories shared by every recipe: environments, networks, collectors, replay, seeds, threads.

Modelled on TorchRL's ``sota-implementations/sac/utils.py``: each ``make_*`` takes the Hydra
config and returns a TorchRL object, so that SAC and HMC-SAC (and the TD3 pair) build identical
environments, networks, collection, replay and evaluation, and differ only in the method.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time

import numpy as np
import torch
from omegaconf import DictConfig
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector, MultiSyncCollector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import (
    Compose,
    DoubleToFloat,
    EnvBase,
    GymEnv,
    InitTracker,
    RewardSum,
    StepCounter,
    TransformedEnv,
)
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import (
    MLP,
    AdditiveGaussianModule,
    NormalParamExtractor,
    ProbabilisticActor,
    TanhModule,
    TanhNormal,
    ValueOperator,
)

logger = logging.getLogger(__name__)

#: Tasks with a config in ``config/env``; ``-v5`` names of the same tasks work through
#: ``env.name=...``. Any other registered Gymnasium id works too, given a config file.
KNOWN_ENVS = (
    "Pendulum-v1",
    "InvertedDoublePendulum-v4",
    "Hopper-v4",
    "HalfCheetah-v4",
    "Walker2d-v4",
    "Ant-v4",
    "Humanoid-v4",
)

#: ``network.activation``'s choices.
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "silu": nn.SiLU}


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; any other name as torch spells it.

    :mod:`~torchrl_mcmc.recipes.config_rules` has checked the name (``device``) before this is
    called.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------- environments
def make_env(cfg: DictConfig, device: torch.device | str = "cpu", from_pixels: bool = False):
    """One Gymnasium env with TorchRL's usual transforms (float32 obs, episode reward, steps)."""
    kwargs = {"render_mode": "rgb_array"} if from_pixels else {}
    env = GymEnv(cfg.env.name, device=device, **kwargs)
    return TransformedEnv(
        env,
        Compose(
            InitTracker(),
            StepCounter(cfg.env.max_episode_steps),
            DoubleToFloat(),
            RewardSum(),
        ),
    )


def make_train_env_factory(cfg: DictConfig):
    """A picklable env constructor for (multi-process) collectors."""
    return functools.partial(make_env, cfg, "cpu")


# ---------------------------------------------------------------------------- networks
def _mlp(
    cfg: DictConfig, in_features: int, out_features: int, hidden: list[int] | None = None
) -> MLP:
    return MLP(
        in_features=in_features,
        out_features=out_features,
        num_cells=list(cfg.network.hidden if hidden is None else hidden),
        activation_class=ACTIVATIONS[cfg.network.activation],
    )


def _policy_hidden(cfg: DictConfig) -> list[int] | None:
    """``network.policy_hidden`` (``[]``: a linear policy), or None to use ``network.hidden``."""
    hidden = cfg.network.policy_hidden
    return None if hidden is None else list(hidden)


def make_stochastic_policy(cfg: DictConfig, env: EnvBase) -> ProbabilisticActor:
    """The SAC policy: ``obs -> (loc, scale)`` MLP and a ``TanhNormal`` to the action bounds."""
    obs_dim = env.observation_spec["observation"].shape[-1]
    spec = env.action_spec
    net = nn.Sequential(
        _mlp(cfg, obs_dim, 2 * spec.shape[-1], _policy_hidden(cfg)),
        NormalParamExtractor(scale_mapping=f"biased_softplus_{cfg.network.default_scale}"),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
        spec=spec,
        return_log_prob=False,
    )


def make_deterministic_policy(cfg: DictConfig, env: EnvBase) -> TensorDictSequential:
    """The TD3 policy: ``obs -> param`` MLP and a ``TanhModule`` to the action bounds."""
    obs_dim = env.observation_spec["observation"].shape[-1]
    spec = env.action_spec
    return TensorDictSequential(
        TensorDictModule(
            _mlp(cfg, obs_dim, spec.shape[-1], _policy_hidden(cfg)),
            in_keys=["observation"],
            out_keys=["param"],
        ),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=spec),
    )


def make_td3_exploration(cfg: DictConfig, env: EnvBase) -> AdditiveGaussianModule:
    """TD3's Gaussian action noise, ``exploration_noise`` times the box's half-width."""
    spec = env.action_spec
    half_width = (spec.space.high - spec.space.low) / 2
    return AdditiveGaussianModule(
        spec=spec,
        sigma_init=1.0,
        sigma_end=1.0,  # constant noise, as in TD3
        std=(cfg.td3.exploration_noise * half_width).tolist(),
    )


def make_critic(cfg: DictConfig, env: EnvBase) -> ValueOperator:
    """``Q(s, a)``: an MLP on the concatenated observation and action."""
    obs_dim = env.observation_spec["observation"].shape[-1]
    return ValueOperator(
        _mlp(cfg, obs_dim + env.action_spec.shape[-1], 1), in_keys=["observation", "action"]
    )


# ---------------------------------------------------------------------------- data
def acting_compiles(policy: nn.Module, cfg: DictConfig, device: torch.device) -> bool:
    """Whether ``torch.compile`` runs ``policy`` here: one compiled call on a reset of the
    task, as a collector makes it (no grad, exploration on), on a copy of the RNG state.

    A platform without a working compiler tool chain, or a policy the compiler cannot handle,
    fails here, once, instead of inside the collector in the middle of a run. The collector
    compiles again (its inputs differ from this reset's), mostly from the compiler's caches.
    """
    env = make_env(cfg, "cpu")
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            compiled = torch.compile(policy)
            with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
                compiled(env.reset().to(device))
    except Exception as err:  # whatever fails, the policy still acts eagerly
        logger.warning(
            "collector.compile_policy: torch.compile fails on the acting policy (%s: %s); "
            "collecting eagerly.",
            type(err).__name__,
            next(iter(str(err).splitlines()), ""),
        )
        return False
    finally:
        env.close()
    logger.info("acting with a compiled policy (first compile %.1f s)", time.perf_counter() - start)
    return True


def make_collector(cfg: DictConfig, policy: nn.Module, device: torch.device, seed: int):
    """TorchRL's single-process ``Collector``, or ``MultiSyncCollector`` for several workers.

    ``seed`` seeds the environments (each worker gets its own seed derived from it). The
    policy's whole state travels to the workers (``TensorDict.from_module(policy)``): for the
    HMC actor that includes the critic parameters it acts with and the chain's parameters.
    With ``collector.compile_policy`` the collector acts with ``torch.compile``'s version of
    the policy (:func:`acting_compiles` checks first that it works; eager otherwise).
    """
    common = {
        "frames_per_batch": cfg.collector.frames_per_batch,
        "total_frames": cfg.collector.total_frames,
        "init_random_frames": cfg.collector.init_random_frames,
        "auto_register_policy_transforms": False,
        "compile_policy": cfg.collector.compile_policy and acting_compiles(policy, cfg, device),
    }
    if cfg.collector.num_workers == 1:
        env = make_env(cfg, "cpu")
        # Seed before the collector's first reset: seeding afterwards leaves the first
        # episode's initial state to chance.
        env.set_seed(seed)
        return Collector(env, policy, device=device, **common)
    collector = MultiSyncCollector(
        [make_train_env_factory(cfg)] * cfg.collector.num_workers, policy, **common
    )
    collector.set_seed(seed)
    return collector


def make_replay_buffer(cfg: DictConfig, device: torch.device) -> TensorDictReplayBuffer:
    """A uniform replay buffer of ``replay.size`` transitions on ``device``, sampling
    ``replay.batch_size`` at a time."""
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(cfg.replay.size, device=device),
        batch_size=cfg.replay.batch_size,
    )


def set_seeds(seed: int) -> None:
    """Seeds Python's ``random``, numpy and torch (the environments are seeded apart)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` (and OpenMP's, unless set already); 0 keeps torch's."""
    if threads > 0:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
