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


class _FlatTree:
    """A flat-array stand-in for TorchRL's C++ segment trees, with their interface and
    semantics (neutral value 0 for sums and inf for minima, ``query(left, right)`` over
    ``[left, right)``, ``scan_lower_bound(mass)``: the first index whose prefix sum exceeds
    ``mass``), in O(n) per query. It lets TorchRL's own ``PrioritizedSampler`` run where its
    extension does not load; the priorities it stores are TorchRL's, written by TorchRL's code."""

    neutral = 0.0
    dtype = torch.float32

    def __init__(self, capacity: int) -> None:
        self.values = torch.full((capacity,), self.neutral, dtype=self.dtype)

    def __getitem__(self, index):
        return self.values[torch.as_tensor(index)]

    def __setitem__(self, index, value) -> None:
        self.values[torch.as_tensor(index)] = torch.as_tensor(value, dtype=self.dtype)

    def __len__(self) -> int:
        return len(self.values)


class _FlatSum(_FlatTree):
    def query(self, left: int, right: int) -> float:
        return float(self.values[int(left) : int(right)].sum())

    def scan_lower_bound(self, mass) -> torch.Tensor:
        cumulative = self.values.double().cumsum(0)
        index = torch.searchsorted(
            cumulative, torch.as_tensor(mass, dtype=torch.double), right=True
        )
        return index.clamp_max(len(self.values) - 1)


class _FlatMin(_FlatTree):
    neutral = float("inf")

    def query(self, left: int, right: int) -> float:
        return float(self.values[int(left) : int(right)].min())


def test_the_flat_trees_answer_as_segment_trees_do() -> None:
    sums, mins = _FlatSum(5), _FlatMin(5)
    sums[torch.tensor([0, 2, 3])] = mins[torch.tensor([0, 2, 3])] = torch.tensor([1.0, 2.0, 0.5])
    assert sums.query(0, 5) == 3.5 and sums.query(1, 3) == 2.0 and mins.query(0, 5) == 0.5
    assert mins.query(1, 2) == float("inf")  # an unwritten slot is neutral
    # Prefix sums 1, 1, 3, 3.5, 3.5: mass 0.5 -> 0, 1.0 -> 2 (index 1 adds nothing), 3.2 -> 3.
    assert sums.scan_lower_bound([0.5, 1.0, 3.2]).tolist() == [0, 2, 3]


@pytest.fixture(params=["extension", "flat"])
def segment_trees(request, monkeypatch) -> str:
    """TorchRL's C++ segment trees where its extension loads; the flat stand-in always."""
    if request.param == "extension":
        if prioritized.SumSegmentTreeFp32 is None:
            pytest.skip("torchrl's C++ extension (its segment trees) does not load here")
        return request.param
    for precision, dtype in (("Fp32", torch.float32), ("Fp64", torch.float64)):
        for name, base in (("Sum", _FlatSum), ("Min", _FlatMin)):
            tree = type(f"{name}SegmentTree{precision}", (base,), {"dtype": dtype})
            monkeypatch.setattr(prioritized, f"{name}SegmentTree{precision}", tree)
    return request.param


@pytest.mark.parametrize("build", [_hmc, _langevin])
def test_a_prioritized_buffer_takes_the_priorities_of_the_sampled_transitions(
    build, segment_trees
) -> None:
    loss = build()
    eps = 1e-6
    buffer = TensorDictPrioritizedReplayBuffer(
        alpha=1.0,
        beta=0.4,
        eps=eps,
        storage=LazyTensorStorage(64),
        batch_size=24,
        generator=torch.Generator().manual_seed(0),
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
    # The next draw follows the new priorities: the transition with the largest error is
    # drawn about as often as its share of the total mass says.
    top = max(last, key=last.get)
    share = float(buffer.sampler._sum_tree[torch.tensor([top])]) / buffer.sampler._sum_tree.query(
        0, 64
    )
    draws = torch.cat([buffer.sample()["index"] for _ in range(200)])
    frequency = (draws == top).double().mean().item()
    assert abs(frequency - share) < 4 * (share * (1 - share) / len(draws)) ** 0.5 + 1e-3


def test_an_unbatched_transition_gets_one_td_error() -> None:
    loss = _langevin()
    batch = make_transitions(OBS, ACT, 1)[0]
    assert isinstance(batch, TensorDict) and batch.batch_size == ()
    loss.qvalue_loss(batch)
    assert batch["td_error"].shape == ()
