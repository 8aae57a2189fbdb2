"""Non-finite values on the actors' side, one policy for the three actors (docs/method.md,
"Non-finite values"):

(a) an observation with a NaN or an inf: a ``ValueError`` naming the key, the bad rows and the
    environment, in every interaction mode;
(b) a critic value or gradient that is not finite along a chain (or an energy error that is
    not): that sample is divergent and falls back to its start, in both actors and both flows;
    best-of-N never picks a candidate of non-finite value;
(c) a policy scale of 0: floored at ``SCALE_LB``, so ``u0_log_prob`` stays finite.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from conftest import make_critic, make_policy, make_td3_policy
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator

from torchrl_mcmc import BestOfNActor, HMCActor, LangevinFlowActor
from torchrl_mcmc.mcmc import HamiltonianFlow, LangevinFlow, normal_log_prob
from torchrl_mcmc.modules.hmc_actor import SCALE_LB

OBS, ACT, BATCH = 3, 2, 16


def _hmc(critic: nn.Module | None = None, **kwargs) -> HMCActor:
    critic = make_critic(OBS, ACT) if critic is None else critic
    return HMCActor(make_policy(OBS, ACT), critic, num_steps=3, **kwargs)


def _langevin(critic: nn.Module | None = None) -> LangevinFlowActor:
    critic = make_critic(OBS, ACT) if critic is None else critic
    return LangevinFlowActor(make_td3_policy(OBS, ACT), critic, state_dim=OBS, num_layers=2)


def _best_of_n(critic: nn.Module | None = None) -> BestOfNActor:
    critic = make_critic(OBS, ACT) if critic is None else critic
    return BestOfNActor(make_policy(OBS, ACT), critic, num_samples=4)


ACTORS = {"HMCActor": _hmc, "LangevinFlowActor": _langevin, "BestOfNActor": _best_of_n}


def _states(batch: int = BATCH) -> TensorDict:
    return TensorDict({"observation": torch.randn(batch, OBS)}, batch_size=[batch])


# ---------------------------------------------------------------------------- (a) observations
@pytest.mark.parametrize("mode", [ExplorationType.RANDOM, ExplorationType.DETERMINISTIC])
@pytest.mark.parametrize("name", list(ACTORS))
def test_a_non_finite_observation_raises_naming_the_key_and_its_rows(name, mode) -> None:
    actor = ACTORS[name]()
    td = _states()
    td["observation"][3, 0] = float("nan")
    td["observation"][5] = float("inf")
    td["observation"][7, -1] = -float("inf")
    with set_exploration_type(mode), pytest.raises(ValueError) as error:
        actor(td)
    message = str(error.value)
    assert message.startswith(f"{name}: the environment produced NaN or inf")
    assert f"'observation' (3 of {BATCH} rows)" in message
    assert "action" not in td  # raised before anything was computed or written
    td["observation"][3, 0] = td["observation"][5] = td["observation"][7, -1] = 0.0
    with set_exploration_type(mode):
        assert actor(td)["action"].isfinite().all()


def test_every_state_input_is_checked_and_an_unbatched_state_is_one_row() -> None:
    # The gates read a second state key: it is one of the actor's inputs, checked as well.
    actor = _hmc(gate_state_key="features", gate_state_dim=4)
    td = _states().set("features", torch.randn(BATCH, 4))
    td["features"][:2] = float("nan")
    with pytest.raises(ValueError, match=r"'features' \(2 of 16 rows\)"):
        actor(td)
    state = TensorDict({"observation": torch.full((OBS,), float("nan"))}, batch_size=[])
    with pytest.raises(ValueError, match=r"'observation' \(1 of 1 rows\)"):
        _hmc()(state)


@pytest.mark.parametrize("name", list(ACTORS))
def test_a_missing_input_key_raises_a_key_error_naming_it_and_the_actor(name) -> None:
    # As TorchRL's own modules do, not "linear(): argument 'input' must be Tensor, not
    # NoneType" from deep inside the policy's network.
    td = TensorDict({"obs": torch.randn(OBS)}, batch_size=[])
    with pytest.raises(KeyError) as error:
        ACTORS[name]()(td)
    message = str(error.value)
    assert message.startswith(f"\"{name}: the input has no 'observation' entry")
    assert "it reads ['observation'] and has ['obs']" in message
    assert "action" not in td  # raised before anything was computed or written


def test_a_missing_gate_state_key_is_named_too() -> None:
    actor = _hmc(gate_state_key="features", gate_state_dim=4)
    with pytest.raises(KeyError, match="HMCActor: the input has no 'features' entry"):
        actor(_states())


# ---------------------------------------------------------------------------- (b) chains
class PoisonedCritic(nn.Module):
    """``Q(s, a) = w . a``, except at the states whose first feature is above 0: ``poison``
    there (a non-finite value, whose gradient autograd finds to be 0), or ``w . a`` times
    ``poison`` with ``gradient=True`` (a non-finite slope: value and gradient)."""

    def __init__(self, poison: float, *, gradient: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.5, -0.3]))
        self.poison, self.gradient = poison, gradient

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        value = (action * self.weight).sum(-1, keepdim=True)
        poisoned = observation[..., :1] > 0
        if self.gradient:  # (a where between value and value * inf would be NaN's gradient)
            return value * torch.where(poisoned, self.poison, 1.0)
        return torch.where(poisoned, torch.full_like(value, self.poison), value)


def _poisoned(poison: float, **kwargs) -> ValueOperator:
    return ValueOperator(PoisonedCritic(poison, **kwargs), in_keys=["observation", "action"])


@pytest.mark.parametrize(
    ("poison", "gradient"),
    [(float("nan"), False), (float("inf"), False), (-float("inf"), False), (float("inf"), True)],
    ids=["nan-value", "inf-value", "minus-inf-value", "inf-slope"],
)
@pytest.mark.parametrize("name", ["HMCActor", "LangevinFlowActor"])
def test_a_non_finite_critic_value_or_gradient_makes_the_chain_divergent(
    name: str, poison: float, gradient: bool
) -> None:
    actor = ACTORS[name](_poisoned(poison, gradient=gradient))
    assert not actor.has_fast_critic  # autograd's path: a finite gradient of a poisoned value
    td = _states(64)
    poisoned = td["observation"][:, 0] > 0
    assert 0 < poisoned.sum() < 64
    out = actor.sample(td)
    torch.testing.assert_close(out.divergent, poisoned, rtol=0, atol=0)
    # They fall back to their start, exactly; the others moved, finite.
    torch.testing.assert_close(out.uK[poisoned], out.u0[poisoned], rtol=0, atol=0)
    assert out.uK.isfinite().all() and out.action.isfinite().all()
    assert (out.uK[~poisoned] - out.u0[~poisoned]).abs().min() > 0
    if name == "HMCActor":
        torch.testing.assert_close(out.rhoK[poisoned], out.rho0[poisoned], rtol=0, atol=0)


@pytest.mark.parametrize("potential_critic", ["min", "mean_std"])
@pytest.mark.parametrize("name", ["HMCActor", "LangevinFlowActor"])
def test_the_closed_form_gradient_marks_a_non_finite_value_too(name, potential_critic) -> None:
    kwargs = {"potential_critic": potential_critic} if name == "HMCActor" else {}
    net = MLP(in_features=OBS + ACT, out_features=1, num_cells=[8], activation_class=nn.ReLU)
    relu = ValueOperator(net, in_keys=["observation", "action"])
    actor = ACTORS[name](relu, **kwargs)
    assert actor.has_fast_critic
    with torch.no_grad():
        relu.module[-1].bias.fill_(math.inf)  # Q = inf everywhere; grad_a Q is finite
    out = actor.sample(_states())
    assert out.divergent.all()
    torch.testing.assert_close(out.uK, out.u0, rtol=0, atol=0)


def test_an_energy_error_of_minus_inf_is_divergent() -> None:
    # The gradient is finite (U = u^2 / 2 as far as the force knows) but U is -inf past u = 0.5:
    # a chain that ends there has dH = -inf, no gain but an undefined target. With the energy
    # check skipped, only what the force reports is seen.
    def potential(u: torch.Tensor) -> torch.Tensor:
        return torch.where(u[:, 0] > 0.5, -torch.inf, 0.5 * (u**2).sum(-1))

    u0 = torch.tensor([[0.0], [-2.0]])
    rho0 = torch.tensor([[3.0], [0.0]])  # the first chain crosses 0.5, the second stays below
    flow = HamiltonianFlow(1, num_steps=2, step_size=0.3, gated=False)
    out = flow(u0, rho0, potential, potential_grad_fn=lambda u: u)
    assert out.divergent.tolist() == [True, False]
    assert out.energy_error[0] == -math.inf
    torch.testing.assert_close(out.position[0], u0[0])
    flow.divergence_threshold = math.inf
    assert not flow(u0, rho0, potential, potential_grad_fn=lambda u: u).divergent.any()


@pytest.mark.parametrize("flow_class", [HamiltonianFlow, LangevinFlow])
def test_both_flows_flag_a_non_finite_potential_found_by_autograd(flow_class) -> None:
    # U is NaN at the second point (its gradient by autograd is 0 there): both flows, on the
    # generic autograd gradient, make it divergent and leave it where it started.
    def potential(u: torch.Tensor) -> torch.Tensor:
        value = -0.5 * (u**2).sum(-1)  # ascended by the Langevin flow, descended by HMC
        return torch.where(u[:, 0] > 1.5, torch.nan, value)

    u0 = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    flow = flow_class(2, num_layers=2) if flow_class is LangevinFlow else flow_class(2)
    with torch.no_grad():
        if flow_class is LangevinFlow:
            out = flow(u0, potential)
        else:
            out = flow(u0, torch.zeros_like(u0), lambda u: -potential(u))
    assert out.divergent.tolist() == [False, True]
    torch.testing.assert_close(out.position[1], u0[1], rtol=0, atol=0)
    assert (out.position[0] != u0[0]).any()


def test_best_of_n_never_picks_a_candidate_of_non_finite_value(caplog) -> None:
    actor = _best_of_n()
    # Q = -|a - 0.3|^2, NaN where the first coordinate is positive.
    nan_right = lambda td, a, params=None: torch.where(  # noqa: E731
        a[..., 0] > 0, torch.nan, -(a - 0.3).pow(2).sum(-1)
    )
    actor.critic_value = nan_right
    states = _states(256)
    torch.manual_seed(0)
    action, _ = actor.select(states)
    torch.manual_seed(0)
    candidates = actor.policy.get_dist(states.clone()).sample((4,))  # the same draws
    finite = candidates[..., 0] <= 0
    has_finite = finite.any(0)
    assert has_finite.any() and not has_finite.all()
    # Where some candidate is finite, the chosen one is the best finite one ...
    scores = torch.where(finite, -(candidates - 0.3).pow(2).sum(-1), -torch.inf)
    best = candidates[scores.argmax(0), torch.arange(256)]
    torch.testing.assert_close(action[has_finite], best[has_finite], rtol=0, atol=0)
    # ... and where none is, the first, with a warning.
    torch.testing.assert_close(action[~has_finite], candidates[0, ~has_finite], rtol=0, atol=0)
    caplog.clear()
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="torchrl_mcmc"):
        actor.select(states)
    (record,) = [r for r in caplog.records if "not finite for any candidate" in r.getMessage()]
    assert f"at {int((~has_finite).sum())} of 256 states" in record.getMessage()


# ---------------------------------------------------------------------------- (c) the scale
class ZeroScale(nn.Module):
    """A policy network whose standard deviation underflows to exactly 0."""

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = 0.1 * observation[..., :ACT]
        return loc, torch.zeros_like(loc)


@pytest.mark.parametrize("prior", ["uniform", "policy"])
def test_a_policy_scale_of_zero_is_floored_and_the_density_stays_finite(prior: str) -> None:
    policy = ProbabilisticActor(
        TensorDictModule(ZeroScale(), in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        spec=Bounded(-1.0, 1.0, shape=(ACT,)),
    )
    actor = HMCActor(policy, make_critic(OBS, ACT), num_steps=3, prior=prior)
    td = _states()
    torch.manual_seed(0)
    out = actor.sample(td)
    loc = 0.1 * td["observation"][:, :ACT]
    torch.testing.assert_close(out.scale, torch.full_like(loc, SCALE_LB))
    torch.manual_seed(0)
    xi = torch.randn_like(loc)  # the same draw
    torch.testing.assert_close(out.u0, loc + SCALE_LB * xi)
    # log N(u0; loc, 1e-4^2) = sum_i (-xi_i^2 / 2 - log 1e-4 - log sqrt(2 pi)): finite, large.
    expected = (-0.5 * xi**2 - math.log(SCALE_LB) - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(out.log_prob, expected, rtol=1e-4, atol=0)  # u0 - loc ~ 1e-4
    torch.testing.assert_close(out.log_prob, normal_log_prob(out.u0, loc, out.scale))
    # The prior's precision is 1e8, not infinite: a stiff chain at worst, which then falls back.
    assert out.uK.isfinite().all() and out.action.isfinite().all()
    written = actor(td)
    assert written["hmc", "u0_log_prob"].isfinite().all()
