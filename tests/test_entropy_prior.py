"""HMC-SAC's variants: the entropy (uniform) prior, the potential's critic, the TD target's
next action, and the frozen groups of the alternating chain. Known answers: with ``K = 0`` the
entropy prior is SAC (TorchRL's ``TanhNormal`` density and soft target), and every closed form
equals autograd."""

from __future__ import annotations

import pytest
import torch
from conftest import make_critic, make_policy, make_transitions
from torchrl.modules import TanhNormal

from torchrl_mcmc import HMCActor, HMCLoss
from torchrl_mcmc.mcmc import potential_grad, squash, squash_log_det

OBS, ACT = 4, 2
LOW, HIGH = -2.0, 3.0  # an asymmetric box, so the squash's scale and shift both matter


def _actor(**kwargs) -> HMCActor:
    policy = make_policy(OBS, ACT, low=LOW, high=HIGH)
    return HMCActor(policy, make_critic(OBS, ACT), **{"num_steps": 3, **kwargs})


def _loss(actor_kwargs=None, **kwargs) -> HMCLoss:
    loss = HMCLoss(_actor(**(actor_kwargs or {})), **kwargs)
    loss.make_value_estimator(gamma=0.99)
    return loss


def test_squash_log_det_equals_the_jacobian_and_stays_finite() -> None:
    u = torch.randn(16, 3, dtype=torch.float64) * 2
    low = torch.tensor([-1.0, 0.0, -5.0], dtype=torch.float64)
    high = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(lambda x: squash(x, low, high)))(u)
    torch.testing.assert_close(squash_log_det(u, low, high), jac.det().abs().log())
    far = torch.tensor([[40.0, -40.0, 0.0]], dtype=torch.float64)
    assert torch.isfinite(squash_log_det(far, low, high)).all()


def test_log_q_at_k0_is_the_tanh_normal_density() -> None:
    # K = 0: log q(a) = log pi(u0) - log|det da/du|(u0), TorchRL's TanhNormal log-density.
    loss = _loss({"num_steps": 0, "prior": "uniform"})
    batch = make_transitions(OBS, ACT, 64)
    out = loss.actor.sample(batch, explore=True)
    dist = TanhNormal(out.loc, out.scale, low=LOW, high=HIGH)
    torch.testing.assert_close(
        loss._log_q_action(out), dist.log_prob(out.action), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("potential_critic", ["min", "first"])
@pytest.mark.parametrize("prior", ["policy", "uniform"])
def test_potential_and_its_closed_form_gradient(prior: str, potential_critic: str) -> None:
    loss = _loss({"prior": prior, "potential_critic": potential_critic})
    loss.actor.beta.fill_(0.7)  # under the uniform prior the loss's beta is its tuned alpha
    actor = loss.actor
    batch = make_transitions(OBS, ACT, 16)
    loc, scale = torch.randn(16, ACT), torch.rand(16, ACT) + 0.5
    u = torch.randn(16, ACT, requires_grad=True)
    params = loss.qvalue_network_params.detach()
    # U by hand: which critics, which prior.
    q_all = loss._qvalues(batch, squash(u, LOW, HIGH), params)
    q = q_all.min(0).values if potential_critic == "min" else q_all[0]
    if prior == "uniform":
        log_prior = squash_log_det(u, torch.tensor(LOW), torch.tensor(HIGH))
    else:
        log_prior = torch.distributions.Normal(loc, scale).log_prob(u).sum(-1)
    expected = -(q / 0.7 + log_prior)
    potential = actor.potential_fn(batch, loc, scale, params)
    torch.testing.assert_close(potential(u), expected)
    grad_fn = actor.potential_grad_fn(batch, loc, scale, params, create_graph=True)
    torch.testing.assert_close(grad_fn(u), potential_grad(potential, u, create_graph=True))


def test_entropy_prior_objective_is_q_minus_alpha_log_q() -> None:
    loss = _loss({"prior": "uniform"}, alpha_init=0.3)
    batch = make_transitions(OBS, ACT, 32)
    torch.manual_seed(0)
    out, states, _, _ = loss._chain(batch, None)
    q_twins = loss._qvalues(states, out.action, loss.qvalue_network_params)
    # The default potential's Q: the twins' mean minus twice their spread (|Q1 - Q2| / 2).
    q = q_twins.mean(0) - 2.0 * (q_twins[0] - q_twins[1]).abs() / 2
    # J = Q - alpha log q(aK) - alpha / 2 |rho0|^2 (a term no parameter moves): with
    # -log N(rhoK) = |rhoK|^2 / 2 + d/2 log 2 pi, the normalisers cancel.
    expected = q - 0.3 * loss._log_q_action(out) - 0.3 * 0.5 * (out.rho0**2).sum(-1)
    torch.testing.assert_close(loss._objective(states, out), expected, atol=1e-5, rtol=1e-5)


def test_alpha_is_tuned_as_sac_and_drives_the_actor() -> None:
    loss = _loss({"prior": "uniform"}, alpha_init=0.5, target_entropy=-1.5)
    assert "loss_alpha" in loss.out_keys and loss.tunes_alpha
    out = loss(make_transitions(OBS, ACT, 32))
    assert loss.actor.beta.item() == pytest.approx(0.5)
    (grad,) = torch.autograd.grad(out["loss_alpha"], loss.log_alpha)
    # d/d log_alpha of -log_alpha * (target - entropy) = entropy - target.
    torch.testing.assert_close(grad, out["entropy"] + 1.5)
    with torch.no_grad():
        loss.log_alpha.fill_(torch.tensor(0.2).log().item())
    assert loss(make_transitions(OBS, ACT, 8))["alpha"].item() == pytest.approx(0.2)
    assert loss.actor.beta.item() == pytest.approx(0.2)
    # The paper's prior leaves beta to a controller.
    plain = _loss({"prior": "policy"})
    assert not plain.tunes_alpha and list(plain.alpha_parameters()) == []
    assert "loss_alpha" not in plain(make_transitions(OBS, ACT, 8))


def test_base_next_action_with_entropy_prior_is_sacs_soft_target() -> None:
    loss = _loss({"prior": "uniform"}, next_action="base", alpha_init=0.4)
    batch = make_transitions(OBS, ACT, 32)
    torch.manual_seed(5)
    value = loss._next_state_value(batch)
    # By hand, with the same draws: a' ~ TanhNormal(pi(s')), V = min Q'(s', a') - alpha log pi(a').
    torch.manual_seed(5)
    next_td = batch["next"]
    dist = loss.actor.policy.get_dist(next_td.clone())
    loc, scale = dist.base_dist.mean, dist.base_dist.stddev
    u0 = loc + scale * torch.randn_like(loc)
    action = squash(u0, LOW, HIGH)
    target = loss._qvalues(next_td, action, loss.target_qvalue_network_params).min(0).values
    log_pi = TanhNormal(loc, scale, low=LOW, high=HIGH).log_prob(action)
    torch.testing.assert_close(value, (target - 0.4 * log_pi).detach(), atol=1e-4, rtol=1e-4)


def test_chain_next_action_differs_from_base() -> None:
    batch = make_transitions(OBS, ACT, 32)
    values = {}
    for mode in ("chain", "base"):
        torch.manual_seed(0)
        loss = _loss(next_action=mode)
        with torch.no_grad():
            loss.actor.flow.log_step_size.fill_(-1.0)  # a chain that visibly moves
        torch.manual_seed(1)
        values[mode] = loss._next_state_value(batch)
    assert not torch.allclose(values["chain"], values["base"])


def test_frozen_group_is_not_differentiated() -> None:
    # Alternating mode: while a group is frozen, the chain sees it as constants (no leaf that
    # requires grad), so the backward computes no gradient it would throw away.
    loss = _loss()
    seen = {}
    sample = loss.actor.sample

    def spy(*args, **kwargs):
        seen.setdefault("h", []).append(
            [p.requires_grad for p in loss.actor.flow.parameters(recurse=True)]
            + [
                t.requires_grad
                for t in loss.actor.flow.state_dict().values()
                if isinstance(t, torch.Tensor)  # (the state dict holds the flow's settings too)
            ]
        )
        seen.setdefault("theta", []).append(
            [t.requires_grad for t in loss.actor.policy.state_dict(keep_vars=True).values()]
        )
        return sample(*args, **kwargs)

    loss.actor.sample = spy
    batch = make_transitions(OBS, ACT, 16)
    loss._chain(batch, "h")
    loss._chain(batch, "theta")
    assert not any(seen["h"][0]) and any(seen["theta"][0])
    assert not any(seen["theta"][1]) and any(seen["h"][1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prior": "flat"}, "prior='flat'"),
        ({"potential_critic": "mean"}, "potential_critic='mean'"),
    ],
)
def test_bad_actor_options(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        _actor(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"next_action": "prior"}, "next_action='prior'"),
        ({"target_entropy": "high"}, "target_entropy"),
        ({"alpha_init": 0.0}, "alpha_init=0.0"),
    ],
)
def test_bad_loss_options(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        _loss(**kwargs)
