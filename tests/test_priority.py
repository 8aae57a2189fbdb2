"""The per-sample ``td_error`` the losses write into their input, as TorchRL's SAC and TD3
losses do: its value by hand, its key, and a real prioritized replay buffer updated from it."""

from __future__ import annotations

import pytest
import torch
from conftest import make_critic, make_policy, make_td3_policy, make_transitions
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictPrioritizedReplayBuffer
from torchrl.data.replay_buffers.samplers import prioritized

from torchrl_mcmc import HMCActor, HMCLoss, LangevinFlowActor, LangevinFlowLoss

OBS, ACT = 4, 2


def _hmc() -> HMCLoss:
    actor = HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT), num_steps=2, prior="uniform")
    loss = HMCLoss(actor)
    loss.make_value_estimator(gamma=0.9)
    return loss


def _langevin(**kwargs) -> LangevinFlowLoss:
    actor = LangevinFlowActor(make_td3_policy(OBS, ACT), make_critic(OBS, ACT), state_dim=OBS)
    loss = LangevinFlowLoss(actor, **kwargs)
    loss.make_value_estimator(gamma=0.9)
    return loss


def test_td_error_is_the_largest_critic_error_per_sample() -> None:
    # TD3's target without smoothing noise is deterministic: r + gamma min_j Q'_j(s', a').
    loss = _langevin(policy_noise=0.0)
    batch = make_transitions(OBS, ACT, 32)
    batch["next", "done"][:4] = batch["next", "terminated"][:4] = True  # no bootstrap there
    next_td = batch["next"]
    next_action = loss._next_action(next_td)
    next_q = loss._qvalues(next_td, next_action, loss.target_qvalue_network_params).min(0).values
    not_done = (~batch["next", "terminated"]).squeeze(-1).float()
    target = batch["next", "reward"].squeeze(-1) + 0.9 * not_done * next_q
    pred = loss._qvalues(batch, batch["action"], loss.qvalue_network_params)
    loss_qvalue, _ = loss.qvalue_loss(batch)  # alone, as a delayed-update loop calls it
    torch.testing.assert_close(batch["td_error"], (pred - target).abs().max(0).values.detach())
    assert not batch["td_error"].requires_grad
    torch.testing.assert_close(loss_qvalue, ((pred - target) ** 2).sum(0).mean())


@pytest.mark.parametrize("build", [_hmc, _langevin])
def test_td_error_is_written_under_the_priority_key(build) -> None:
    loss = build()
    loss.set_keys(priority=("priority", "critic"))
    batch = make_transitions(OBS, ACT, 16)
    out = loss(batch)
    assert "td_error" not in batch and batch["priority", "critic"].shape == (16,)
    assert (batch["priority", "critic"] >= 0).all()
    # The output's td_error is the batch mean of the same errors (a diagnostic).
    torch.testing.assert_close(out["td_error"], batch["priority", "critic"].mean())


_SEGMENT_TREES = prioritized.SumSegmentTreeFp32 is not None


@pytest.mark.skipif(
    not _SEGMENT_TREES,
    reason="torchrl's C++ extension (its segment trees) does not load with this torch build",
)
@pytest.mark.parametrize("build", [_hmc, _langevin])
def test_a_prioritized_buffer_takes_the_priorities_of_the_sampled_transitions(build) -> None:
    loss = build()
    eps = 1e-6
    buffer = TensorDictPrioritizedReplayBuffer(
        alpha=1.0, beta=0.4, eps=eps, storage=LazyTensorStorage(64), batch_size=24
    )
    buffer.extend(make_transitions(OBS, ACT, 64))
    batch = buffer.sample()
    loss(batch)
    buffer.update_tensordict_priority(batch)
    # With alpha = 1 the sum tree holds |td_error| + eps. A transition sampled twice keeps the
    # priority of its last occurrence, the one written last.
    index, td_error = batch["index"].tolist(), batch["td_error"].tolist()
    last = dict(zip(index, td_error, strict=True))
    stored = torch.as_tensor(buffer.sampler._sum_tree[torch.tensor(list(last))])
    expected = torch.tensor(list(last.values()), dtype=stored.dtype) + eps
    torch.testing.assert_close(stored, expected)
    # The transitions not sampled kept the initial priority (the buffer's max, 1).
    untouched = sorted(set(range(64)) - set(last))
    torch.testing.assert_close(
        torch.as_tensor(buffer.sampler._sum_tree[torch.tensor(untouched)]),
        torch.full((len(untouched),), 1.0 + eps, dtype=stored.dtype),
    )


def test_an_unbatched_transition_gets_one_td_error() -> None:
    loss = _langevin()
    batch = make_transitions(OBS, ACT, 1)[0]
    assert isinstance(batch, TensorDict) and batch.batch_size == ()
    loss.qvalue_loss(batch)
    assert batch["td_error"].shape == ()
