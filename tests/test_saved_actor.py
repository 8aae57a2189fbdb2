"""A trained actor deploys without its loss: ``state_dict`` -> file -> a freshly built actor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import make_critic, make_policy, make_td3_policy, make_transitions
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import LossModule

from torchrl_mcmc import BestOfNActor, HMCActor, HMCLoss, LangevinFlowActor, LangevinFlowLoss
from torchrl_mcmc.mcmc import HamiltonianFlow, LangevinFlow
from torchrl_mcmc.modules.common import MCMCActorBase

OBS, ACT = 4, 2


def _hmc_actor(critic_hidden: int = 32) -> HMCActor:
    return HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT, hidden=critic_hidden), num_steps=3)


def _langevin_actor(critic_hidden: int = 32) -> LangevinFlowActor:
    return LangevinFlowActor(
        make_td3_policy(OBS, ACT),
        make_critic(OBS, ACT, hidden=critic_hidden),
        state_dim=OBS,
        num_layers=2,
    )


#: (actor factory, loss class): the factories build the same architecture on every call.
ACTORS = {
    "hmc": (_hmc_actor, HMCLoss),
    "langevin": (_langevin_actor, LangevinFlowLoss),
}


def _train_briefly(actor: MCMCActorBase, loss_class: type[LossModule], steps: int = 5) -> None:
    """A few Adam steps on every loss term (policy, chain and the loss's own critics)."""
    loss = loss_class(actor)
    loss.make_value_estimator(gamma=0.99)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-2)
    for _ in range(steps):
        out = loss(make_transitions(OBS, ACT, batch=32))
        total = sum(v for k, v in out.items() if k.startswith("loss_"))
        optim.zero_grad()
        total.backward()
        optim.step()


def _deterministic_actions(actor: MCMCActorBase, states: TensorDict) -> torch.Tensor:
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        return actor(states.clone())["action"]


@pytest.fixture
def states() -> TensorDict:
    return TensorDict({"observation": torch.randn(64, OBS)}, batch_size=[64])


@pytest.mark.parametrize("kind", list(ACTORS))
def test_a_saved_actor_loads_alone_and_acts_with_its_trained_critic(
    kind: str, states: TensorDict, tmp_path: Path
) -> None:
    build, loss_class = ACTORS[kind]
    trained = build()
    _train_briefly(trained, loss_class)
    expected = _deterministic_actions(trained, states)
    torch.save(trained.state_dict(), tmp_path / "actor.pt")

    torch.manual_seed(1)  # other initial weights: everything must come from the file
    fresh = build()  # no loss: critic_params is unbound
    assert fresh.critic_params is None
    assert not torch.allclose(_deterministic_actions(fresh, states), expected)
    saved = torch.load(tmp_path / "actor.pt", weights_only=True)
    result = fresh.load_state_dict(saved, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert fresh.critic_params is not None and fresh.critic_params.shape == (2,)
    torch.testing.assert_close(_deterministic_actions(fresh, states), expected, rtol=0, atol=0)

    # The check can tell: the same file without the critic the actor acted with (the critic
    # module's own weights, which the loss never trains) gives other actions.
    untrained = {k: v for k, v in saved.items() if not k.startswith("critic_params.")}
    torch.manual_seed(1)
    without_critic = build()
    without_critic.load_state_dict(untrained)
    assert not torch.allclose(_deterministic_actions(without_critic, states), expected)


@pytest.mark.parametrize("kind", list(ACTORS))
def test_loading_into_an_actor_with_a_loss_restores_the_saved_critic(
    kind: str, states: TensorDict
) -> None:
    build, loss_class = ACTORS[kind]
    trained = build()
    _train_briefly(trained, loss_class)
    expected = _deterministic_actions(trained, states)
    torch.manual_seed(1)
    resumed = build()
    loss = loss_class(resumed)  # binds its own, freshly drawn critics
    resumed.load_state_dict(trained.state_dict())
    torch.testing.assert_close(_deterministic_actions(resumed, states), expected, rtol=0, atol=0)
    # Loaded into the loss's parameters in place: training would go on from the saved critic.
    assert resumed.critic_params is loss.qvalue_network_params


@pytest.mark.parametrize("kind", list(ACTORS))
@pytest.mark.parametrize(
    ("critic_hidden", "dropped", "strict", "match"),
    [
        (
            16,
            None,
            True,
            r"critic_params\.module\.0\.weight has shape \(2, 32, 6\), "
            r"the critic needs \(2, 16, 6\)",
        ),
        (32, "critic_params.module.4.bias", True, r"critic_params\.module\.4\.bias is missing"),
        # Even with strict=False: acting with part of a critic is never what was saved.
        (32, "critic_params.module.4.bias", False, r"critic_params\.module\.4\.bias is missing"),
    ],
    ids=["other-width", "missing-entry", "missing-entry-not-strict"],
)
def test_a_saved_critic_that_does_not_fit_raises_naming_the_key(
    kind: str, critic_hidden: int, dropped: str | None, strict: bool, match: str
) -> None:
    build, loss_class = ACTORS[kind]
    source = build()
    loss_class(source)  # binds two critics: critic_params.* in its state
    state = {k: v for k, v in source.state_dict().items() if k != dropped}
    receiver = build(critic_hidden=critic_hidden)
    with pytest.raises(RuntimeError, match=match):
        receiver.load_state_dict(state, strict=strict)
    assert receiver.critic_params is None  # nothing half-bound


@pytest.mark.parametrize("kind", list(ACTORS))
def test_a_saved_critic_count_other_than_the_bound_one_raises(kind: str) -> None:
    build, loss_class = ACTORS[kind]
    source = build()
    loss_class(source)  # binds two critics: critic_params.* in its state
    receiver = build()
    loss_class(receiver)  # two bound critics
    one_critic = {
        k: v[:1] if k.startswith("critic_params.") else v for k, v in source.state_dict().items()
    }
    with pytest.raises(
        RuntimeError, match=r"has shape \(1, 32, 6\), the critic needs \(2, 32, 6\)"
    ):
        receiver.load_state_dict(one_critic)


# ---------------------------------------------------------------------------- saved settings
def _bon_actor(action_dim: int = ACT, **kwargs) -> BestOfNActor:
    return BestOfNActor(make_policy(OBS, action_dim), make_critic(OBS, action_dim), **kwargs)


def _hmc(action_dim: int = ACT, **kwargs) -> HMCActor:
    return HMCActor(make_policy(OBS, action_dim), make_critic(OBS, action_dim), **kwargs)


def _ld(action_dim: int = ACT, **kwargs) -> LangevinFlowActor:
    policy, critic = make_td3_policy(OBS, action_dim), make_critic(OBS, action_dim)
    return LangevinFlowActor(policy, critic, state_dim=OBS, **kwargs)


#: (actor factory, the saved actor's keywords, the receiver's, the message).
OTHER_SETTINGS = {
    "hmc-K": (_hmc, {"num_steps": 5}, {"num_steps": 2}, "flow.num_steps is 5 in the state, 2 here"),
    "hmc-gates": (
        _hmc,
        {"gate_hidden": 8},
        {"gate_hidden": 16},
        "flow.gate_hidden is 8 in the state, 16 here",
    ),
    "hmc-ungated": (_hmc, {}, {"gated": False}, "flow.gated is True in the state, False here"),
    "hmc-gate-state": (
        _hmc,
        {"gate_state_key": "observation", "gate_state_dim": OBS},
        {},
        f"flow.state_dim is {OBS} in the state, 0 here",
    ),
    "hmc-prior": (_hmc, {}, {"prior": "policy"}, "prior is 'uniform' in the state, 'policy' here"),
    "hmc-potential": (
        _hmc,
        {"potential_critic": "mean_std", "pessimism": 3.0},
        {},
        "pessimism is 3.0 in the state, 2.0 here",
    ),
    "hmc-action-dim": (_hmc, {"action_dim": 3}, {}, "action_dim is 3 in the state, 2 here"),
    "ld-K": (
        _ld,
        {"num_layers": 4},
        {"num_layers": 2},
        "flow.num_layers is 4 in the state, 2 here",
    ),
    "ld-scale-bound": (
        _ld,
        {"scale_bound": 2.0},
        {},
        "flow.scale_bound is 2.0 in the state, 1.0 here",
    ),
    "ld-potential": (
        _ld,
        {"potential_critic": "first"},
        {},
        "potential_critic is 'first' in the state, 'min' here",
    ),
    "ld-action-dim": (_ld, {"action_dim": 3}, {}, "action_dim is 3 in the state, 2 here"),
    "bon-N": (_bon_actor, {"num_samples": 6}, {"num_samples": 2}, "num_samples is 6 in the state"),
    "bon-action-dim": (_bon_actor, {"action_dim": 3}, {}, "action_dim is 3 in the state, 2 here"),
}


@pytest.mark.parametrize("case", list(OTHER_SETTINGS))
def test_a_state_saved_with_other_settings_is_refused_naming_each(case: str, tmp_path) -> None:
    build, saved_kwargs, own_kwargs, message = OTHER_SETTINGS[case]
    source = build(**saved_kwargs)
    torch.save(source.state_dict(), tmp_path / "actor.pt")
    saved = torch.load(tmp_path / "actor.pt", weights_only=True)  # the settings read back
    receiver = build(**own_kwargs)
    before = {k: v.clone() for k, v in receiver.state_dict().items() if isinstance(v, torch.Tensor)}
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=re.escape(message)) as error:
            receiver.load_state_dict(saved, strict=strict)
        assert str(error.value).startswith(
            f"cannot load this state into the {type(receiver).__name__}"
        )
    # Refused before anything was loaded or bound.
    assert receiver.critic_params is None
    for key, value in receiver.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    # The same settings load.
    build(**saved_kwargs).load_state_dict(saved)


def test_every_difference_is_named_at_once_and_the_loss_state_is_checked_too() -> None:
    source = HMCLoss(_hmc(num_steps=5, prior="policy"))
    receiver = HMCLoss(_hmc(num_steps=2))
    with pytest.raises(RuntimeError) as error:
        receiver.load_state_dict(source.state_dict())
    message = str(error.value)  # keys as the loss's state dict names them
    assert "actor.flow.num_steps is 5 in the state, 2 here" in message
    assert "actor.prior is 'policy' in the state, 'uniform' here" in message


def test_the_saved_settings_are_the_constructors() -> None:
    actor = _hmc(num_steps=4, gated=False, prior="policy", potential_critic="min")
    state = actor.state_dict()
    assert state["_extra_state"] == {
        "action_dim": ACT,
        "prior": "policy",
        "potential_critic": "min",
        "pessimism": 1.0,
    }
    assert state["flow._extra_state"] == {
        "action_dim": ACT,
        "num_steps": 4,
        "gated": False,
        "gate_hidden": None,
        "state_dim": None,
    }
    flow = _ld(num_layers=2, hidden=8).state_dict()["flow._extra_state"]
    assert flow == {
        "action_dim": ACT,
        "num_layers": 2,
        "hidden": 8,
        "state_dim": OBS,
        "scale_bound": 1.0,
    }
    assert _bon_actor(num_samples=3).state_dict()["_extra_state"] == {
        "num_samples": 3,
        "action_dim": ACT,
    }


@pytest.mark.parametrize(
    ("flow", "other", "message"),
    [
        (HamiltonianFlow(2, num_steps=5), HamiltonianFlow(2, num_steps=2), "num_steps is 5"),
        (LangevinFlow(2, num_layers=4), LangevinFlow(2, num_layers=2), "num_layers is 4"),
    ],
)
def test_a_flow_alone_refuses_a_state_of_other_settings(flow, other, message) -> None:
    with pytest.raises(RuntimeError, match=message):
        other.load_state_dict(flow.state_dict())
