"""Non-finite values, one policy for every loss (docs/method.md, "Non-finite values"):

(a) in the batch: a ``ValueError`` naming the key and the bad rows, before anything is computed;
(b) in a chain (the critic's value or gradient): the sample is divergent, counted, left out;
(c) the diagnostics: over the samples kept; left out when none is;
(d) in the parameters: the non-finite loss is returned as it is, for the loop to skip.
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_critic, make_policy, make_td3_policy, make_transitions
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import ValueOperator

from torchrl_mcmc import HMCActor, HMCLoss, LangevinFlowActor, LangevinFlowLoss
from torchrl_mcmc.modules import BestOfNActor
from torchrl_mcmc.objectives import BestOfNSACLoss

OBS, ACT, BATCH = 4, 2, 32


def _hmc(critic: nn.Module | None = None, **actor_kwargs) -> HMCLoss:
    critic = make_critic(OBS, ACT) if critic is None else critic
    actor = HMCActor(make_policy(OBS, ACT), critic, num_steps=3, **actor_kwargs)
    loss = HMCLoss(actor, update_mode="alternating")
    loss.make_value_estimator(gamma=0.99)
    return loss


def _langevin(critic: nn.Module | None = None) -> LangevinFlowLoss:
    critic = make_critic(OBS, ACT) if critic is None else critic
    actor = LangevinFlowActor(make_td3_policy(OBS, ACT), critic, state_dim=OBS, num_layers=2)
    loss = LangevinFlowLoss(actor)
    loss.make_value_estimator(gamma=0.99)
    return loss


def _best_of_n() -> BestOfNSACLoss:
    actor = BestOfNActor(make_policy(OBS, ACT), make_critic(OBS, ACT), num_samples=3)
    loss = BestOfNSACLoss(actor, action_spec=Bounded(-1.0, 1.0, shape=(ACT,)))
    loss.make_value_estimator(gamma=0.99)
    return loss


LOSSES = {"HMCLoss": _hmc, "LangevinFlowLoss": _langevin, "BestOfNSACLoss": _best_of_n}


# ---------------------------------------------------------------------------- (a) the batch
@pytest.mark.parametrize(
    "key", ["observation", "action", ("next", "reward"), ("next", "observation")]
)
@pytest.mark.parametrize("name", list(LOSSES))
def test_a_non_finite_batch_raises_naming_the_key_and_its_rows(name: str, key) -> None:
    loss = LOSSES[name]()
    batch = make_transitions(OBS, ACT, BATCH)
    values = batch[key]
    values[3, 0] = float("nan")
    values[5] = float("inf")
    values[7, -1] = -float("inf")
    with pytest.raises(ValueError) as error:
        loss(batch)
    message = str(error.value)
    assert f"{key!r} (3 of {BATCH} rows)" in message
    assert message.startswith(f"{name}:") and "the environment or the replay buffer" in message
    assert "td_error" not in batch  # nothing was computed, nothing written
    # One bad key is named alone; a finite batch passes.
    assert message.count(" rows)") == 1
    values[3, 0] = values[5] = values[7, -1] = 0.0
    assert loss(batch)["loss_qvalue"].isfinite()


@pytest.mark.parametrize("name", ["HMCLoss", "LangevinFlowLoss"])
def test_each_loss_term_checks_what_it_reads(name: str) -> None:
    loss = LOSSES[name]()
    batch = make_transitions(OBS, ACT, BATCH)
    batch["next", "observation"][0] = float("nan")
    # The policy's terms read the states only; the critic's term reads the transition.
    assert loss.actor_loss(batch)[0].isfinite() and loss.flow_loss(batch)[0].isfinite()
    with pytest.raises(ValueError, match=r"\('next', 'observation'\) \(1 of 32 rows\)"):
        loss.qvalue_loss(batch)
    batch["observation"][1:3] = float("nan")
    for term in (loss.actor_loss, loss.flow_loss, loss.qvalue_loss):
        with pytest.raises(ValueError, match=r"'observation' \(2 of 32 rows\)"):
            term(batch)


# ---------------------------------------------------------------------------- (b), (c) chains
class PoisonedCritic(nn.Module):
    """A linear critic that returns ``poison`` (NaN or inf) at the states whose first feature is
    above ``threshold``, whatever the action: a non-finite value with a finite gradient, which
    no leapfrog or coupling layer would notice by its motion."""

    def __init__(self, poison: float, threshold: float = 0.5) -> None:
        super().__init__()
        self.linear = nn.Linear(OBS + ACT, 1)
        self.poison, self.threshold = poison, threshold

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        value = self.linear(torch.cat([observation, action], dim=-1))
        poisoned = observation[..., :1] > self.threshold
        return torch.where(poisoned, torch.full_like(value, self.poison), value)


def _poisoned(name: str, poison: float, threshold: float = 0.5):
    critic = ValueOperator(PoisonedCritic(poison, threshold), in_keys=["observation", "action"])
    return LOSSES[name](critic)


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["HMCLoss", "LangevinFlowLoss"])
def test_a_non_finite_critic_value_makes_the_chain_divergent(name: str, poison: float) -> None:
    loss = _poisoned(name, poison)
    batch = make_transitions(OBS, ACT, BATCH)
    poisoned = int((batch["observation"][:, 0] > 0.5).sum())
    assert 0 < poisoned < BATCH
    out = loss(batch)
    assert out["num_divergent"].item() == poisoned
    assert "critic_gain" in out  # the diagnostics of the chains kept, finite as every term
    # All finite but the critic's own loss and error: its values are not (returned as is).
    for key, value in out.items():
        assert value.isfinite() == (key not in ("loss_qvalue", "td_error")), key
    (out["loss_actor"] + out["loss_flow"]).backward()
    grads = [p.grad for p in [*loss.policy_parameters(), *loss.flow_parameters()]]
    assert all(g is not None and g.isfinite().all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)  # the other states still train


def test_a_non_finite_end_value_drops_the_chain_the_actor_kept(caplog) -> None:
    # The actor checks the critic where its layers evaluate it; Q(s, aK) at the flow's end is
    # the loss's own evaluation, so the loss drops what is not finite there, and says so.
    loss = _langevin()
    batch = make_transitions(OBS, ACT, 8)
    sample = loss.actor.sample(batch, critic_params=loss.qvalue_network_params.detach())
    divergent = torch.zeros(8, dtype=torch.bool)
    divergent[0] = True  # one the actor flagged already
    sample = sample._replace(divergent=divergent)
    value = torch.tensor([0.0, float("nan"), 1.0, float("inf"), 2.0, 3.0, -float("inf"), 4.0])
    with caplog.at_level(logging.WARNING, logger="torchrl_mcmc"):
        drop = loss._drop_divergent(sample, value)
    assert drop.tolist() == [True, True, False, True, False, False, True, False]
    (message,) = [r.getMessage() for r in caplog.records if "Q(s, aK)" in r.getMessage()]
    assert "3 of 8 states" in message  # the three the loss added
    clean = sample._replace(divergent=torch.zeros(8, dtype=torch.bool))
    assert loss._drop_divergent(clean, torch.zeros(8)) is None  # nothing to drop: no mask


def test_the_diagnostics_are_those_of_the_chains_kept() -> None:
    # The flow is deterministic: the diagnostics of a batch with poisoned states are exactly
    # those of the batch without them, and its objective too.
    loss = _poisoned("LangevinFlowLoss", float("nan"))
    with torch.no_grad():
        for p in loss.actor.policy.parameters():
            p.add_(0.3 * torch.randn_like(p))  # a prior that differs: a non-zero distance
    batch = make_transitions(OBS, ACT, BATCH)
    kept = batch[batch["observation"][:, 0] <= 0.5]
    loss_all, meta_all = loss.actor_loss(batch)
    loss_kept, meta_kept = loss.actor_loss(kept)
    assert meta_all["num_divergent"] > 0 and meta_kept["num_divergent"] == 0
    assert meta_all["policy_distance"] > 0
    for key in ("policy_distance", "critic_gain", "step_size"):
        torch.testing.assert_close(meta_all[key], meta_kept[key])
    torch.testing.assert_close(loss_all, loss_kept)


@pytest.mark.parametrize("name", ["HMCLoss", "LangevinFlowLoss"])
def test_with_no_chain_kept_the_chains_diagnostics_are_left_out(name: str) -> None:
    loss = _poisoned(name, float("nan"), threshold=-float("inf"))  # every state poisoned
    out = loss(make_transitions(OBS, ACT, BATCH))
    assert out["num_divergent"].item() == BATCH
    chain_diagnostics = set(loss._DIAGNOSTICS) - {"beta", "num_divergent", "step_size", "td_error"}
    assert chain_diagnostics and not chain_diagnostics & set(out.keys())
    assert set(out.keys()) <= set(loss.out_keys)
    assert out["loss_actor"].item() == 0.0 and out["loss_flow"].item() == 0.0
    temperature = "alpha" if getattr(loss, "tunes_alpha", False) else "beta"
    assert out["step_size"].isfinite() and out[temperature].isfinite()


def test_with_no_chain_kept_the_temperature_does_not_move() -> None:
    poisoned = PoisonedCritic(float("nan"), threshold=-float("inf"))
    loss = _hmc(ValueOperator(poisoned, in_keys=["observation", "action"]), prior="uniform")
    out = loss(make_transitions(OBS, ACT, BATCH))
    assert out["num_divergent"].item() == BATCH and "entropy" not in out
    (grad,) = torch.autograd.grad(out["loss_alpha"], loss.log_alpha)
    assert out["loss_alpha"].item() == 0.0 and grad.item() == 0.0


# ---------------------------------------------------------------------------- (d) parameters
@pytest.mark.parametrize("name", ["HMCLoss", "HMCLoss-min", "LangevinFlowLoss"])
def test_non_finite_parameters_give_a_non_finite_critic_loss_returned_as_is(name: str) -> None:
    loss = _hmc(potential_critic="min") if name == "HMCLoss-min" else LOSSES[name]()
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.mul_(1e30)  # float32: the critic's values overflow to inf
    batch = make_transitions(OBS, ACT, BATCH)
    out = loss(batch)
    # The critic's squared errors (~1e60) overflow float32: the loss is inf, returned as it is,
    # not hidden; the training loop must skip the step, and the priority update with it.
    assert out["loss_qvalue"].isinf()
    assert batch["td_error"].shape == (BATCH,) and batch["td_error"].min() > 1e20
    # The policy's terms are guarded: finite, and so are their gradients. With the twins'
    # minimum they are of the critic's size; the default's spread term overflows in every
    # chain, so every chain diverges and the terms are zeros (docs/running.md).
    terms = out["loss_actor"] + out["loss_flow"]
    if name == "HMCLoss":
        assert out["num_divergent"].item() == BATCH and terms.item() == 0.0
    else:
        assert terms.isfinite() and terms.abs() > 1e20
    terms.backward()
    assert all(p.grad.isfinite().all() for p in loss.policy_parameters())


def test_an_unbatched_state_is_checked_as_one_row() -> None:
    loss = _hmc()
    state = TensorDict({"observation": torch.full((OBS,), float("nan"))}, batch_size=[])
    with pytest.raises(ValueError, match=r"'observation' \(1 of 1 rows\)"):
        loss.actor_loss(state)
