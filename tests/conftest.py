"""Shared builders and checks: small TorchRL policies, critics and batches, gradient isolation."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import (
    MLP,
    NormalParamExtractor,
    ProbabilisticActor,
    TanhModule,
    TanhNormal,
    ValueOperator,
)
from torchrl.objectives import LossModule


def make_policy(
    obs_dim: int,
    action_dim: int,
    *,
    low: float = -1.0,
    high: float = 1.0,
    obs_key="observation",
    action_key="action",
    hidden: int = 32,
    deterministic: bool = False,
) -> ProbabilisticActor | TensorDictSequential:
    """A TorchRL actor on ``[low, high]``: SAC's, or TD3's with ``deterministic=True``.

    SAC's is an MLP to ``(loc, scale)`` and a ``TanhNormal``; TD3's an MLP to ``"param"`` and a
    ``TanhModule``.
    """
    spec = Bounded(low, high, shape=(action_dim,))
    if deterministic:
        net = MLP(in_features=obs_dim, out_features=action_dim, num_cells=[hidden, hidden])
        return TensorDictSequential(
            TensorDictModule(net, in_keys=[obs_key], out_keys=["param"]),
            TanhModule(in_keys=["param"], out_keys=[action_key], spec=spec),
        )
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


def make_td3_policy(obs_dim: int, action_dim: int, **kwargs) -> TensorDictSequential:
    """TorchRL's deterministic TD3 actor (:func:`make_policy`'s keywords)."""
    return make_policy(obs_dim, action_dim, deterministic=True, **kwargs)


def make_critic(
    obs_dim: int, action_dim: int, *, obs_key="observation", action_key="action", hidden: int = 32
) -> ValueOperator:
    return ValueOperator(
        MLP(in_features=obs_dim + action_dim, out_features=1, num_cells=[hidden, hidden]),
        in_keys=[obs_key, action_key],
    )


def make_transitions(obs_dim: int, action_dim: int, batch: int = 32) -> TensorDict:
    """A replay-buffer sample: random ``(s, a, r, s')``, actions in ``[-1, 1]``, none done."""
    return TensorDict(
        {
            "observation": torch.randn(batch, obs_dim),
            "action": torch.rand(batch, action_dim) * 2 - 1,
            "next": {
                "observation": torch.randn(batch, obs_dim),
                "reward": torch.randn(batch, 1),
                "done": torch.zeros(batch, 1, dtype=torch.bool),
                "terminated": torch.zeros(batch, 1, dtype=torch.bool),
            },
        },
        batch_size=[batch],
    )


# ---------------------------------------------------------------------------- gradient isolation
#: ``(update_mode, loss term, parameter groups it must reach)`` for an MCMC loss. The chain's
#: parameters (group ``"flow"``) have a loss term of their own in alternating mode,
#: ``"loss_flow"``; in joint mode the actor loss trains them together with the policy.
LOSS_TERM_CASES: list[tuple[str, str, set[str]]] = [
    ("alternating", "loss_actor", {"policy"}),
    ("alternating", "loss_flow", {"flow"}),
    ("alternating", "loss_qvalue", {"critic"}),
    ("joint", "loss_actor", {"policy", "flow"}),
    ("joint", "loss_qvalue", {"critic"}),
]


def mcmc_parameter_groups(loss: LossModule, **own: Iterable[torch.Tensor]) -> dict[str, list]:
    """Where a gradient of an MCMC loss (``HMCLoss``, ``LangevinFlowLoss``) could land.

    The groups every such loss has: the policy, the trained critics, the frozen prior and the
    critic module the actor was built with (the loss trains copies of it); ``own`` adds the
    loss's own, e.g. the chain's parameters and a ``"target"`` group.
    """
    groups = {
        "policy": loss.policy_parameters(),
        "critic": loss.critic_parameters(),
        "prior": loss.actor.prior.parameters(),
        "critic_module": loss.actor.critic.parameters(),
        **own,
    }
    return {name: list(params) for name, params in groups.items()}


def assert_term_reaches_exactly(
    loss: LossModule, batch: TensorDict, key: str, reached: set[str], groups: dict[str, list]
) -> None:
    """Backpropagates the term ``key`` of ``loss(batch)`` and checks where its gradient went.

    Every group in ``reached`` gets a non-zero gradient and every other group none, and every
    gradient is finite; the ``"target"`` and ``"prior"`` groups do not even require gradients;
    ``batch`` is left unchanged but for the ``td_error`` written into it.
    """
    before = batch.clone()
    loss(batch)[key].backward()
    for name, params in groups.items():
        grads = [p.grad for p in params if p.grad is not None]
        assert all(g.isfinite().all() for g in grads), (key, name)
        total = sum(g.abs().sum().item() for g in grads)
        assert (total > 0) == (name in reached), (key, name, total)
    # Parameters that must never receive gradients do not even require them.
    for name in ("target", "prior"):
        assert not any(p.requires_grad for p in groups[name]), (key, name)
    # The input tensordict is unchanged, but for the per-sample priority the critic loss writes
    # into it, as TorchRL's losses do.
    assert set(batch.keys(True, True)) == set(before.keys(True, True)) | {"td_error"}
    assert batch["td_error"].shape == batch.shape
    torch.testing.assert_close(batch.exclude("td_error"), before, rtol=0, atol=0)


def losses_and_grads(
    losses: Iterable[LossModule], batch: TensorDict, seed: int = 7
) -> tuple[list[TensorDict], list[dict[str, torch.Tensor]]]:
    """Each loss's outputs on a copy of ``batch`` (same draws: ``seed`` before each) and the
    gradients of the sum of its ``loss_*`` terms, by parameter name: what a fast path and the
    generic path it replaces are compared on."""
    outputs, grads = [], []
    for loss in losses:
        torch.manual_seed(seed)
        out = loss(batch.clone())
        sum(out[k] for k in out.keys(True, True) if k.startswith("loss_")).backward()
        outputs.append(out)
        grads.append({n: p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None})
    return outputs, grads


@pytest.fixture(autouse=True)
def _seeded():
    # Every test starts from the same RNG state and leaves the global state as it found it.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield
