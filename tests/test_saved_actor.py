"""A trained actor deploys without its loss: ``state_dict`` -> file -> a freshly built actor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_critic, make_policy, make_td3_policy, make_transitions
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import LossModule

from torchrl_mcmc import HMCActor, HMCLoss, LangevinFlowActor, LangevinFlowLoss
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
