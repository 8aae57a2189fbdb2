"""Shared builders: small TorchRL policies and critics of the shapes our tests need."""

from __future__ import annotations

import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal, ValueOperator


def make_policy(
    obs_dim: int,
    action_dim: int,
    *,
    low: float = -1.0,
    high: float = 1.0,
    obs_key="observation",
    action_key="action",
    hidden: int = 32,
) -> ProbabilisticActor:
    spec = Bounded(low, high, shape=(action_dim,))
    net = nn.Sequential(
        MLP(in_features=obs_dim, out_features=2 * action_dim, num_cells=[hidden, hidden]),
        NormalParamExtractor(),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=[obs_key], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        out_keys=[action_key],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": low, "high": high},
        spec=spec,
    )


def make_critic(
    obs_dim: int, action_dim: int, *, obs_key="observation", action_key="action", hidden: int = 32
) -> ValueOperator:
    return ValueOperator(
        MLP(in_features=obs_dim + action_dim, out_features=1, num_cells=[hidden, hidden]),
        in_keys=[obs_key, action_key],
    )


@pytest.fixture(autouse=True)
def _seeded():
    # Every test starts from the same RNG state and leaves the global state as it found it.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield
