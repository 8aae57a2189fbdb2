"""The pessimistic potential (``potential_critic="mean_std"``): ``mean - k * std`` over the
critics. Known answers: with twin critics ``k = 1`` is their minimum and ``k = 0`` their mean;
the closed-form gradient of the fast path equals autograd, to second order; the losses score
the same ``Q`` the chain ascends."""

from __future__ import annotations

import pytest
import torch
from conftest import make_critic, make_policy, make_td3_policy, make_transitions
from tensordict import TensorDict
from torch import nn
from torchrl.modules import MLP, ValueOperator

from torchrl_mcmc import HMCActor, HMCLoss, LangevinFlowActor, LangevinFlowLoss
from torchrl_mcmc.mcmc import potential_grad, squash
from torchrl_mcmc.modules._fast_paths import mean_minus_std

OBS, ACT = 4, 2


def _critic(activation: type[nn.Module]) -> ValueOperator:
    net = MLP(
        in_features=OBS + ACT, out_features=1, num_cells=[16, 16], activation_class=activation
    )
    return ValueOperator(net, in_keys=["observation", "action"])


def test_mean_minus_std_known_answers() -> None:
    q = torch.tensor([[1.0, -2.0, 5.0], [3.0, -2.0, 0.0]])  # two critics, three states
    torch.testing.assert_close(mean_minus_std(q, 1.0), q.min(0).values)
    torch.testing.assert_close(mean_minus_std(q, 0.0), q.mean(0))
    # Three critics: population std of (0, 3, 6) is sqrt(6).
    three = torch.tensor([[0.0], [3.0], [6.0]])
    torch.testing.assert_close(mean_minus_std(three, 2.0), torch.tensor([3.0 - 2.0 * 6.0**0.5]))
    # Critics that agree: the mean, with a finite gradient of 1 / n each.
    same = torch.ones(2, 1, requires_grad=True)
    value = mean_minus_std(same, 3.0)
    (grad,) = torch.autograd.grad(value.sum(), same)
    assert value.item() == 1.0 and torch.equal(grad, torch.full((2, 1), 0.5))


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])  # closed form, autograd
@pytest.mark.parametrize(("num_critics", "pessimism"), [(2, 0.5), (2, 2.0), (3, 1.5)])
def test_hmc_potential_and_its_gradient(activation, num_critics: int, pessimism: float) -> None:
    policy = make_policy(OBS, ACT, low=-2.0, high=3.0)
    actor = HMCActor(
        policy,
        _critic(activation),
        num_steps=3,
        prior="policy",  # the Gaussian prior written out below
        potential_critic="mean_std",
        pessimism=pessimism,
    )
    loss = HMCLoss(actor, num_qvalue_nets=num_critics)
    assert actor.has_fast_critic == (activation is nn.ReLU)
    params = loss.qvalue_network_params.detach().clone()
    params.apply_(lambda t: t + 0.3 * torch.randn_like(t))  # critics that disagree
    batch = make_transitions(OBS, ACT, 80)  # >= 64 states: the grouped path exists for min
    loc, scale = torch.randn(80, ACT), torch.rand(80, ACT) + 0.5
    u = torch.randn(80, ACT, requires_grad=True)
    q = loss._qvalues(batch, squash(u, actor.action_low, actor.action_high), params)
    q = q.mean(0) - pessimism * q.std(0, correction=0)
    log_prior = torch.distributions.Normal(loc, scale).log_prob(u).sum(-1)
    potential = actor.potential_fn(batch, loc, scale, params)
    torch.testing.assert_close(potential(u), -(q + log_prior))  # beta = 1
    grad = actor.potential_grad_fn(batch, loc, scale, params, create_graph=True)(u)
    expected = potential_grad(potential, u, create_graph=True)
    torch.testing.assert_close(grad, expected)
    second = [torch.autograd.grad((g**2).sum(), u)[0] for g in (grad, expected)]
    torch.testing.assert_close(*second, atol=1e-4, rtol=1e-4)  # float32, other summation order


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
def test_langevin_potential_and_its_gradient(activation) -> None:
    actor = LangevinFlowActor(
        make_td3_policy(OBS, ACT),
        _critic(activation),
        state_dim=OBS,
        potential_critic="mean_std",
        pessimism=2.0,
    )
    loss = LangevinFlowLoss(actor, num_qvalue_nets=3)
    params = loss.qvalue_network_params.detach().clone()
    params.apply_(lambda t: t + 0.3 * torch.randn_like(t))
    batch = make_transitions(OBS, ACT, 16)
    prior_action = torch.rand(16, ACT) * 2 - 1
    u = torch.randn(16, ACT, requires_grad=True)
    potential = actor.potential_fn(batch, prior_action, params)
    grad = actor.potential_grad_fn(batch, prior_action, params, create_graph=True)(u)
    torch.testing.assert_close(grad, potential_grad(potential, u, create_graph=True))


def test_unit_pessimism_with_twins_is_the_minimum() -> None:
    """Same seed, same networks: ``mean_std`` with ``k = 1`` gives the ``min`` losses."""
    results = []
    for kwargs in ({"potential_critic": "min"}, {"potential_critic": "mean_std", "pessimism": 1}):
        torch.manual_seed(0)
        actor = HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT), num_steps=3, **kwargs)
        loss = HMCLoss(actor)
        loss.make_value_estimator(gamma=0.99)
        torch.manual_seed(1)
        results.append(loss(make_transitions(OBS, ACT, 32)))
    assert results[0].keys() == results[1].keys()
    assert {"loss_actor", "loss_qvalue", "critic_gain", "elbo_gap"} <= set(results[0].keys())
    for key in results[0].keys(True, True):
        torch.testing.assert_close(results[0][key], results[1][key])


def test_the_objective_scores_the_pessimistic_value() -> None:
    actor = HMCActor(
        make_policy(OBS, ACT), make_critic(OBS, ACT), potential_critic="mean_std", pessimism=3.0
    )
    loss = HMCLoss(actor)
    batch = make_transitions(OBS, ACT, 8)
    out = actor.sample(batch, explore=True)
    q = loss._qvalues(batch, out.action, loss.qvalue_network_params.detach())
    expected = q.mean(0) - 3.0 * (q[0] - q[1]).abs() / 2
    torch.testing.assert_close(loss._q_end(batch, out), expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"potential_critic": "max"}, "potential_critic='max'"),
        ({"potential_critic": "mean_std", "pessimism": -1.0}, "pessimism=-1.0"),
        ({"potential_critic": "mean_std", "pessimism": float("nan")}, "pessimism=nan"),
        ({"potential_critic": "min", "pessimism": 2.0}, "only with potential_critic='mean_std'"),
    ],
)
def test_bad_options(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT), **kwargs)
    with pytest.raises(ValueError, match=match):
        LangevinFlowActor(make_td3_policy(OBS, ACT), make_critic(OBS, ACT), state_dim=OBS, **kwargs)


def test_acting_with_a_pessimistic_chain_is_finite_and_in_bounds() -> None:
    actor = HMCActor(
        make_policy(OBS, ACT), make_critic(OBS, ACT), potential_critic="mean_std", pessimism=2.0
    )
    HMCLoss(actor)  # binds twin critics
    with torch.no_grad():
        td = actor(TensorDict({"observation": torch.randn(5, OBS)}, batch_size=[5]))
    assert td["action"].isfinite().all() and (td["action"].abs() <= 1).all()


@pytest.mark.parametrize("build", ["hmc", "langevin"])
def test_pessimism_left_unset_is_two_under_mean_std_and_one_otherwise(build: str) -> None:
    def actor(**kwargs):
        if build == "hmc":
            return HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT), **kwargs)
        return LangevinFlowActor(
            make_td3_policy(OBS, ACT), make_critic(OBS, ACT), state_dim=OBS, **kwargs
        )

    assert actor(potential_critic="mean_std").pessimism == 2.0
    assert actor(potential_critic="mean_std", pessimism=0.5).pessimism == 0.5
    assert actor(potential_critic="min").pessimism == actor(potential_critic="first").pessimism == 1
    with pytest.raises(
        ValueError, match=r"pessimism=3\.0 is read only with potential_critic='mean_std'"
    ):
        actor(potential_critic="min", pessimism=3)
