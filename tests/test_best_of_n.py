"""The best-of-N control: it picks the critic's best candidate, acts with the trained critics,
and with ``N = 1`` is exactly TorchRL's SAC."""

from __future__ import annotations

import pytest
import torch
from conftest import make_critic, make_policy, make_transitions
from tensordict.nn import InteractionType, set_interaction_type
from torchrl.data import Bounded
from torchrl.objectives import SACLoss

from torchrl_mcmc import BestOfNActor, BestOfNSACLoss

OBS, ACT = 4, 2
SPEC = Bounded(-1.0, 1.0, shape=(ACT,))


def _actor(num_samples: int) -> BestOfNActor:
    return BestOfNActor(make_policy(OBS, ACT), make_critic(OBS, ACT), num_samples=num_samples)


def _known_critic(actor: BestOfNActor) -> None:
    # Q(s, a) = -|a - 0.3|^2: the best candidate is the one nearest 0.3.
    actor.critic_value = lambda td, action, params=None: -(action - 0.3).pow(2).sum(-1)


@pytest.mark.parametrize("explore", [True, False])
def test_selects_the_candidate_the_critic_ranks_best(explore: bool) -> None:
    actor = _actor(num_samples=8)
    _known_critic(actor)
    states = make_transitions(OBS, ACT, 16).select("observation")
    torch.manual_seed(0)
    action, log_prob = actor.select(states, explore=explore)
    torch.manual_seed(0)
    dist = actor.policy.get_dist(states.clone())
    candidates = dist.sample((8,))
    if not explore:
        candidates[0] = dist.deterministic_sample
    best = (-(candidates - 0.3).pow(2).sum(-1)).argmax(0)
    torch.testing.assert_close(action, candidates[best, torch.arange(16)])
    torch.testing.assert_close(log_prob, dist.log_prob(candidates)[best, torch.arange(16)])


def test_deterministic_mode_includes_the_mode_and_random_mode_samples() -> None:
    actor = _actor(num_samples=1)
    states = make_transitions(OBS, ACT, 4).select("observation")
    with set_interaction_type(InteractionType.DETERMINISTIC):
        a = actor(states.clone())["action"]
        b = actor(states.clone())["action"]
    torch.testing.assert_close(a, b)  # N = 1 in deterministic mode: the policy's mode
    mode = actor.policy.get_dist(states.clone()).deterministic_sample
    torch.testing.assert_close(a, mode)
    with set_interaction_type(InteractionType.RANDOM):
        assert not torch.allclose(actor(states.clone())["action"], a)


def test_one_sample_is_exactly_torchrl_sac() -> None:
    torch.manual_seed(0)
    actor = _actor(num_samples=1)
    bon = BestOfNSACLoss(actor, action_spec=SPEC, delay_qvalue=True)
    sac = SACLoss(actor.policy, actor.critic, action_spec=SPEC, delay_qvalue=True)
    for name in ("qvalue_network_params", "target_qvalue_network_params"):
        getattr(bon, name).data.update_(getattr(sac, name).data)
    for loss in (bon, sac):
        loss.make_value_estimator(gamma=0.99)
    batch = make_transitions(OBS, ACT, 32)
    targets = []
    for loss in (bon, sac):
        torch.manual_seed(7)
        targets.append(loss._compute_target_v2(batch))
    torch.testing.assert_close(*targets)


def test_target_uses_the_best_next_action_by_the_trained_critics() -> None:
    actor = _actor(num_samples=6)
    loss = BestOfNSACLoss(actor, action_spec=SPEC, delay_qvalue=True)
    loss.make_value_estimator(gamma=0.99)
    assert actor.critic_params is loss.qvalue_network_params  # acts with the trained critics
    batch = make_transitions(OBS, ACT, 32)
    torch.manual_seed(3)
    target = loss._compute_target_v2(batch)
    # By hand with the same draws.
    torch.manual_seed(3)
    next_td = batch["next"]
    dist = actor.policy.get_dist(next_td.clone())
    candidates = dist.sample((6,))  # [6, 32, ACT]
    flat = next_td.select("observation").expand(6, 32).reshape(-1)
    online = actor.critic_values(flat, candidates.reshape(-1, ACT), loss.qvalue_network_params)
    best = online.min(0).values.reshape(6, 32).argmax(0)
    action = candidates[best, torch.arange(32)]
    log_prob = dist.log_prob(candidates)[best, torch.arange(32)]
    q_target = actor.critic_values(
        next_td.select("observation"), action, loss.target_qvalue_network_params
    )
    next_value = q_target.min(0).values - loss._alpha * log_prob
    expected = batch["next", "reward"].squeeze(-1) + 0.99 * next_value
    torch.testing.assert_close(target, expected, atol=1e-5, rtol=1e-5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_samples=0"):
        _actor(num_samples=0)
    with pytest.raises(TypeError, match="num_samples=True"):  # a bool is no count
        _actor(num_samples=True)
    with pytest.raises(TypeError, match="BestOfNActor"):
        BestOfNSACLoss(make_policy(OBS, ACT))
    with pytest.raises(ValueError, match="delay_actor"):
        BestOfNSACLoss(_actor(2), delay_actor=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"alpha_init": float("nan")},
            ValueError,
            "alpha_init must be finite and > 0, got alpha_init=nan",
        ),
        (
            {"alpha_init": -1.0},
            ValueError,
            r"alpha_init must be finite and > 0, got alpha_init=-1.0",
        ),
        (
            {"alpha_init": 1e-39},
            ValueError,
            "alpha_init=1e-39 is too small: 1 / alpha_init overflows",
        ),
        ({"alpha_init": True}, TypeError, "alpha_init=True"),
        (
            {"target_entropy": float("inf")},
            ValueError,
            r"target_entropy must be 'auto' \(-action_dim\) or a finite number, got "
            "target_entropy=inf",
        ),
        ({"target_entropy": float("nan")}, ValueError, "target_entropy=nan"),
        ({"target_entropy": True}, TypeError, "target_entropy=True"),
        ({"num_qvalue_nets": True}, TypeError, "num_qvalue_nets=True"),
    ],
)
def test_bad_sac_arguments_are_named_before_anything_is_built(kwargs, error, match) -> None:
    actor = _actor(2)
    with pytest.raises(error, match=match):
        BestOfNSACLoss(actor, action_spec=SPEC, **kwargs)
    assert actor.critic_params is None


def test_a_missing_key_raises_a_key_error_naming_it() -> None:
    actor = _actor(2)
    loss = BestOfNSACLoss(actor, action_spec=SPEC)
    with pytest.raises(KeyError, match=r"BestOfNSACLoss: the batch has no .*'next', 'observation'"):
        loss(make_transitions(OBS, ACT, 4).exclude("next"))
    with pytest.raises(KeyError, match="BestOfNActor: the input has no 'observation' entry"):
        actor(make_transitions(OBS, ACT, 4).exclude("observation"))
    # ("next", "terminated") stays optional: TorchRL's value estimators take it from done.
    out = loss(make_transitions(OBS, ACT, 4).exclude(("next", "terminated")))
    assert out["loss_qvalue"].isfinite()


def test_a_second_loss_on_the_same_actor_warns_that_it_takes_over_the_critics() -> None:
    actor = _actor(2)
    BestOfNSACLoss(actor, action_spec=SPEC)
    with pytest.warns(UserWarning, match="it now acts with the new BestOfNSACLoss's critics"):
        second = BestOfNSACLoss(actor, action_spec=SPEC)
    assert actor.critic_params is second.qvalue_network_params
