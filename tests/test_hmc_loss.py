"""HMCLoss in the paper's configuration: gradient isolation, the critic hand-over, keys, and
real training loops. (The recommended configuration, the entropy prior: test_entropy_prior.py.)"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import (
    LOSS_TERM_CASES,
    assert_term_reaches_exactly,
    losses_and_grads,
    make_critic,
    make_policy,
    make_transitions,
    mcmc_parameter_groups,
)
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs import DoubleToFloat, GymEnv, TransformedEnv
from torchrl.objectives import SoftUpdate
from torchrl.trainers import ReplayBufferTrainer, TargetNetUpdaterHook, Trainer

from torchrl_mcmc import HMCActor, HMCLoss, PIDBetaHook, PIDController
from torchrl_mcmc.mcmc import normal_log_prob, squash, standard_normal_log_prob
from torchrl_mcmc.mcmc.hamiltonian import DIVERGENCE_THRESHOLD

OBS, ACT = 4, 2
#: The paper's actor: the previous policy as prior, the twins' minimum in the potential.
PAPER_ACTOR = {"prior": "policy", "potential_critic": "min"}


def _loss(**kwargs) -> HMCLoss:
    actor = HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT), num_steps=3, **PAPER_ACTOR)
    loss = HMCLoss(actor, **{**HMCLoss.PAPER_KWARGS, **kwargs})
    loss.make_value_estimator(gamma=0.99)
    return loss


def _batch(batch: int = 32) -> TensorDict:
    return make_transitions(OBS, ACT, batch)


@pytest.mark.parametrize(("mode", "key", "reached"), LOSS_TERM_CASES)
def test_each_loss_reaches_exactly_its_parameters(mode: str, key: str, reached: set) -> None:
    loss = _loss(update_mode=mode)
    groups = mcmc_parameter_groups(
        loss,
        flow=loss.flow_parameters(),
        target=loss.target_qvalue_network_params.values(True, True),
    )
    assert_term_reaches_exactly(loss, _batch(), key, reached, groups)


def test_joint_mode_has_no_separate_flow_loss() -> None:
    out = _loss(update_mode="joint")(_batch())
    assert "loss_flow" not in out
    assert {"beta", "policy_distance", "elbo_gap", "num_divergent"} <= set(out.keys())


def test_actor_acts_with_the_trained_critic() -> None:
    loss = _loss()
    actor = loss.actor
    batch = _batch()
    states, action = batch.select("observation"), torch.rand(32, ACT) * 2 - 1
    stale = actor.critic(states.clone().set("action", action))["state_action_value"].squeeze(-1)
    before = actor.critic_value(states, action)
    optim = torch.optim.Adam(loss.critic_parameters(), lr=1e-2)
    optim.zero_grad()
    loss(batch)["loss_qvalue"].backward()
    optim.step()
    after = actor.critic_value(states, action)
    assert not torch.allclose(after, before)
    # Exactly the min over the loss's trained critics, not the original module's weights.
    trained = loss._qvalues(states, action, loss.qvalue_network_params).min(0).values
    torch.testing.assert_close(after, trained)
    assert not torch.allclose(after, stale)
    # And the potential the chain descends moves with it.
    prior_loc, prior_scale = torch.zeros(32, ACT), torch.ones(32, ACT)
    u = torch.randn(32, ACT)
    expected = -(
        loss._qvalues(states, squash(u, -1.0, 1.0), loss.qvalue_network_params).min(0).values
        / actor.beta
        + normal_log_prob(u, prior_loc, prior_scale)
    )
    torch.testing.assert_close(actor.potential_fn(states, prior_loc, prior_scale)(u), expected)


def test_objective_and_distance_match_eq_17_by_hand() -> None:
    loss = _loss()
    batch = _batch()
    torch.manual_seed(3)
    out, states, _, _ = loss._chain(batch, None)
    q = loss._qvalues(states, out.action, loss.qvalue_network_params).min(0).values
    log_prior_uK = normal_log_prob(out.uK, out.prior_loc, out.prior_scale)
    beta = loss.beta
    expected = (
        q - beta * (out.log_prob - log_prior_uK) - beta / 2 * (out.rhoK**2).sum(-1)
    ).detach()
    torch.testing.assert_close(loss._objective(states, out).detach(), expected)
    distance = loss._diagnostics(states, out)["policy_distance"]
    by_hand = (
        out.log_prob
        + standard_normal_log_prob(out.rho0)
        - log_prior_uK
        - standard_normal_log_prob(out.rhoK)
    ).mean()
    torch.testing.assert_close(distance, by_hand.detach())


@pytest.mark.parametrize("num_steps", [0, 3])
def test_entropy_is_the_sum_of_its_base_chain_and_squash_parts(num_steps: int) -> None:
    """The logged entropy splits into the base policy's, the chain's and the squash's parts;
    the squash's part is checked against autograd's derivative of the squash on bounds that
    are not [-1, 1], the chain's against the momenta's Gaussian log-densities by hand."""
    torch.manual_seed(0)
    actor = HMCActor(
        make_policy(OBS, ACT, low=-2.0, high=3.0), make_critic(OBS, ACT), num_steps=num_steps
    )
    loss = HMCLoss(actor)
    loss.make_value_estimator(gamma=0.99)
    out, states, _, _ = loss._chain(_batch(batch=4096), None)
    meta = loss._diagnostics(states, out)
    u = out.uK.detach().requires_grad_(True)
    (slope,) = torch.autograd.grad(squash(u, actor.action_low, actor.action_high).sum(), u)
    torch.testing.assert_close(meta["entropy_squash"], slope.log().sum(-1).mean())
    by_hand = (0.5 * (out.rho0**2 - out.rhoK**2)).sum(-1).mean().detach()
    torch.testing.assert_close(meta["entropy_chain"], by_hand)
    if num_steps == 0:
        assert meta["entropy_chain"] == 0.0
    else:
        assert meta["entropy_chain"].abs() > 1e-4  # the chain moved: not a vacuous split
    # Sample by sample the estimate is the sum; the base part's sample mean estimates the
    # logged (exact Gaussian) base entropy to within a few standard errors.
    sample_base = -out.log_prob.detach()
    torch.testing.assert_close(
        meta["entropy"], sample_base.mean() + meta["entropy_chain"] + meta["entropy_squash"]
    )
    error = 4 * sample_base.std() / 4096**0.5
    assert (sample_base.mean() - meta["base_entropy"]).abs() < error


def test_beta_is_shared_schedulable_and_checkpointed() -> None:
    loss = _loss()
    loss.beta = 0.25
    assert loss.actor.beta.item() == 0.25
    assert loss(_batch())["beta"].item() == 0.25
    state = loss.state_dict()
    other = _loss()
    other.load_state_dict(state)
    assert other.beta.item() == 0.25
    with pytest.raises(ValueError, match="beta"):
        loss.beta = 0.0
    with pytest.raises(ValueError, match="too small"):
        loss.beta = 1e-40  # > 0 in float32, but 1 / beta overflows


def test_refresh_prior_is_explicit() -> None:
    loss = _loss()
    optim = torch.optim.Adam(loss.policy_parameters(), lr=1e-2)
    loss(_batch())["loss_actor"].backward()
    optim.step()
    prior = [p.clone() for p in loss.actor.prior.parameters()]
    policy = list(loss.policy_parameters())
    assert not all(torch.equal(a, b) for a, b in zip(prior, policy, strict=True))
    loss.refresh_prior()
    assert all(
        torch.equal(a, b) for a, b in zip(loss.actor.prior.parameters(), policy, strict=True)
    )


def test_auxiliary_target_entropy_changes_the_target() -> None:
    batch = _batch()
    values = {}
    for mode in ("none", "auxiliary"):
        torch.manual_seed(0)
        loss = _loss(value_entropy=mode)
        torch.manual_seed(1)
        values[mode] = loss._next_state_value(batch)
    assert not torch.allclose(values["none"], values["auxiliary"])


def test_set_keys_renames_work_end_to_end() -> None:
    obs, act = ("agent", "obs"), ("agent", "act")
    actor = HMCActor(
        make_policy(OBS, ACT, obs_key=obs, action_key=act),
        make_critic(OBS, ACT, obs_key=obs, action_key=act),
        num_steps=2,
        **PAPER_ACTOR,
    )
    loss = HMCLoss(actor, **HMCLoss.PAPER_KWARGS)
    loss.set_keys(reward=("agent", "rew"), done=("agent", "done"), terminated=("agent", "term"))
    loss.make_value_estimator(gamma=0.9)
    assert loss.tensor_keys.action == act
    batch = TensorDict(
        {
            "agent": {"obs": torch.randn(8, OBS), "act": torch.rand(8, ACT)},
            "next": {
                "agent": {
                    "obs": torch.randn(8, OBS),
                    "rew": torch.randn(8, 1),
                    "done": torch.zeros(8, 1, dtype=torch.bool),
                    "term": torch.zeros(8, 1, dtype=torch.bool),
                }
            },
        },
        batch_size=[8],
    )
    out = loss(batch)
    assert all(out[k].isfinite() for k in ("loss_actor", "loss_flow", "loss_qvalue"))
    assert ("next", "agent", "rew") in loss.in_keys
    with pytest.raises(ValueError, match="rewrd"):
        loss.set_keys(rewrd="r")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"update_mode": "sequential"}, "update_mode='sequential'"),
        ({"value_entropy": "sac"}, "value_entropy='sac'"),
        ({"num_qvalue_nets": 0}, "num_qvalue_nets"),
        ({"loss_function": "huber"}, "huber"),
        # alpha_init becomes the actor's beta (float32): the actor's rule for beta.
        (
            {"alpha_init": 1e-39},  # 1e-39 in float32, but 1 / alpha is inf: beta would be 0
            r"alpha_init=1e-39 is too small: 1 / alpha_init overflows torch.float32; "
            r"alpha_init must lie between 2.94e-39 and 3.4e\+38",
        ),
        ({"alpha_init": 1e39}, r"alpha_init=1e\+39 is too large: it is inf in torch.float32"),
        *[
            (
                {"target_entropy": value},
                r"target_entropy must be 'auto' \(-action_dim\) or a finite number, got "
                f"target_entropy={value!r}",
            )
            for value in (float("nan"), float("inf"), -float("inf"))
        ],
    ],
)
def test_bad_loss_arguments(kwargs, match) -> None:
    actor = HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT))
    with pytest.raises(ValueError, match=match):
        HMCLoss(actor, **kwargs)
    assert actor.critic_params is None  # raised before anything was built


@pytest.mark.parametrize("name", ["num_qvalue_nets", "alpha_init", "target_entropy"])
def test_a_bool_where_a_number_is_expected_is_a_type_error_naming_it(name) -> None:
    actor = HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT))
    with pytest.raises(TypeError, match=f"{name}.*got {name}=True"):
        HMCLoss(actor, **{name: True})


def test_beta_cannot_be_set_under_the_uniform_prior_where_it_is_the_tuned_alpha() -> None:
    loss = HMCLoss(HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT), num_steps=1))
    with pytest.raises(ValueError) as error:
        loss.beta = 0.05  # would be overwritten by alpha at the next call
    message = str(error.value)
    assert "HMCLoss: beta cannot be set (got beta=0.05)" in message
    assert "prior='uniform'" in message and "alpha_init=" in message
    assert "HMCActor.PAPER_KWARGS" in message and "HMCLoss.PAPER_KWARGS" in message
    assert loss.actor.beta.item() == 1.0  # unchanged
    _loss().beta = 0.05  # the paper's prior: set from outside


def test_a_second_loss_on_the_same_actor_warns_that_it_takes_over_the_critics() -> None:
    actor = HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT), num_steps=1, **PAPER_ACTOR)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        first = HMCLoss(actor)  # the first binding: no warning
        actor.bind_critic_params(first.qvalue_network_params)  # the same ones: none either
    with pytest.warns(UserWarning) as record:
        second = HMCLoss(actor)
    (message,) = [str(w.message) for w in record if "critic parameters" in str(w.message)]
    assert "HMCActor: its critic parameters were bound already" in message
    assert "it now acts with the new HMCLoss's critics" in message
    assert "the earlier ones are no longer the ones acting" in message
    assert actor.critic_params is second.qvalue_network_params


def test_a_batch_without_next_raises_a_key_error_naming_the_missing_entries() -> None:
    loss = _loss()
    with pytest.raises(KeyError) as error:
        loss(_batch(4).exclude("next"))
    message = str(error.value)
    assert message.startswith(
        "\"HMCLoss: the batch has no ('next', 'observation'), ('next', 'reward'), "
        "('next', 'done') entries"
    )
    assert "has ['action', 'observation']" in message
    # ("next", "terminated") stays optional: TorchRL's value estimators take it from done.
    loss_q, _ = loss.qvalue_loss(_batch(4).exclude(("next", "terminated")))
    assert loss_q.isfinite()


# ---------------------------------------------------------------------------- training loops
PID = {"target": 1.0, "kp": 0.5, "ki": 0.1, "kd": 0.0, "beta_init": 1.0, "beta_min": 0.05}
PID["beta_max"] = 20.0


def _pendulum_setup():
    env = TransformedEnv(GymEnv("Pendulum-v1"), DoubleToFloat())
    env.set_seed(0)
    actor = HMCActor(
        make_policy(3, 1, low=-2.0, high=2.0, hidden=64),
        make_critic(3, 1, hidden=64),
        action_spec=env.action_spec,
        num_steps=3,
        **PAPER_ACTOR,
    )
    loss = HMCLoss(actor, **HMCLoss.PAPER_KWARGS)
    loss.make_value_estimator(gamma=0.99)
    collector = Collector(
        env, actor, frames_per_batch=500, total_frames=3000, auto_register_policy_transforms=False
    )
    buffer = ReplayBuffer(storage=LazyTensorStorage(3000), batch_size=128)
    return actor, loss, collector, buffer


def test_plain_loop_on_pendulum_with_pid() -> None:
    _actor, loss, collector, buffer = _pendulum_setup()
    updater = SoftUpdate(loss, eps=0.995)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
    pid = PIDController(**PID)
    betas, distances, frames = [], [], 0
    for batch in collector:
        frames += batch.numel()
        buffer.extend(batch.reshape(-1))
        loss.refresh_prior()
        batch_distances = []
        for _ in range(16):
            out = loss(buffer.sample())
            for key in ("loss_actor", "loss_flow", "loss_qvalue"):
                assert out[key].isfinite(), (key, out)
            optim.zero_grad()
            (out["loss_actor"] + out["loss_flow"] + out["loss_qvalue"]).backward()
            optim.step()
            updater.step()
            batch_distances.append(out["policy_distance"].item())
        distances.append(sum(batch_distances) / len(batch_distances))
        loss.beta = pid.update(distances[-1])  # the one line a custom loop needs
        betas.append(loss.beta.item())
    collector.shutdown()
    assert frames == 3000
    assert all(PID["beta_min"] <= b <= PID["beta_max"] for b in betas)
    # beta responds to the measured distance exactly as the controller's rule says.
    replay = PIDController(**PID)
    assert betas == pytest.approx([replay.update(d) for d in distances], rel=1e-6)
    assert len(set(betas)) > 1 and betas[-1] != PID["beta_init"]


def test_torchrl_trainer_with_pid_hook_on_pendulum() -> None:
    _actor, loss, collector, buffer = _pendulum_setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(
            collector=collector,
            total_frames=3000,
            frame_skip=1,
            optim_steps_per_batch=8,
            loss_module=loss,
            optimizer=torch.optim.Adam(loss.parameters(), lr=3e-4),
            progress_bar=False,
            log_interval=0,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ReplayBufferTrainer(buffer, batch_size=128, flatten_tensordicts=True).register(trainer)
    TargetNetUpdaterHook(SoftUpdate(loss, eps=0.995)).register(trainer, "target_net_updater")
    trainer.register_op("pre_optim_steps", loss.refresh_prior)
    hook = PIDBetaHook(loss, PIDController(**PID))
    hook.register(trainer)
    trainer.train()
    assert hook.controller.num_updates == 6  # once per collected batch
    betas = trainer._log_dict["pid_beta"]
    assert len(betas) == 6 and all(PID["beta_min"] <= b <= PID["beta_max"] for b in betas)
    assert loss.beta.item() == pytest.approx(betas[-1], rel=1e-6)
    replay = PIDController(**PID)
    distances = trainer._log_dict["pid_distance"]
    assert betas == pytest.approx([replay.update(d) for d in distances], rel=1e-5)
    assert all(torch.isfinite(torch.tensor(v)).all() for v in trainer._log_dict["loss_actor"])


def _relu_loss(update_mode: str, beta: float = 1.0) -> HMCLoss:
    from torch import nn
    from torchrl.modules import MLP, ValueOperator

    critic = ValueOperator(
        MLP(in_features=OBS + ACT, out_features=1, num_cells=[32, 32], activation_class=nn.ReLU),
        in_keys=["observation", "action"],
    )
    actor = HMCActor(make_policy(OBS, ACT), critic, num_steps=4, beta=beta, **PAPER_ACTOR)
    loss = HMCLoss(actor, **{**HMCLoss.PAPER_KWARGS, "update_mode": update_mode})
    loss.make_value_estimator(gamma=0.99)
    return loss


@pytest.mark.parametrize("update_mode", ["alternating", "joint"])
def test_fast_relu_critic_path_equals_the_generic_path(update_mode: str) -> None:
    import copy

    fast = _relu_loss(update_mode)
    generic = copy.deepcopy(fast)
    generic.actor.bind_critic_params(generic.qvalue_network_params)
    generic.actor._fast_critic = None  # force the TensorDict + vmap + autograd path
    assert fast.actor.has_fast_critic and not generic.actor.has_fast_critic
    batch = _batch(batch=96)  # >= 64 states: the grouped picked-critic branch runs too
    outputs, grads = losses_and_grads((fast, generic), batch)
    for key in outputs[0].keys(True, True):
        torch.testing.assert_close(outputs[0][key], outputs[1][key], rtol=1e-4, atol=1e-5)
    assert len(grads[0]) == len(grads[1]) > 0 and grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5)
    # Acting takes the same path: identical actions from the same draws.
    td = batch.select("observation")
    torch.manual_seed(3)
    a = fast.actor(td.clone())["action"]
    torch.manual_seed(3)
    b = generic.actor(td.clone())["action"]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- divergence guard
def _blown_up_loss(
    case: str, update_mode: str = "alternating", double: bool = False
) -> tuple[HMCLoss, TensorDict]:
    """The finite blow-ups of issue 10, on the scripts' ReLU critic: a tiny beta (float32 unless
    ``double``), or critic weights x1e50 (always float64, where they stay finite)."""
    loss = _relu_loss(update_mode, beta=1e-6 if case == "beta=1e-6" else 1.0)
    batch = _batch(batch=64)
    if double or case == "critic x1e50":
        loss = loss.double()
        batch = batch.apply(lambda t: t.double() if t.is_floating_point() else t)
    if case == "critic x1e50":
        with torch.no_grad():
            for p in loss.qvalue_network_params.values(True, True):
                p.mul_(1e50)
    return loss, batch


def _assert_all_finite(out: TensorDict) -> None:
    bad = [k for k, v in out.items() if not torch.isfinite(v).all()]
    assert not bad, {k: out[k] for k in bad}


@pytest.mark.parametrize("case", ["beta=1e-6", "critic x1e50"])
def test_a_finite_blow_up_is_flagged_divergent_and_the_losses_stay_finite(case: str) -> None:
    # Before the energy check these chains swung out to |uK| ~ 1e2..1e146 with no chain flagged:
    # beta=1e-6 gave elbo_gap ~ -4e5, critic x1e50 gave loss_actor ~ 3e293.
    loss, batch = _blown_up_loss(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = loss(batch)
    _assert_all_finite(out)
    assert out["num_divergent"] > 0
    if case == "beta=1e-6":  # (critic x1e50: every chain diverges, no ELBO is measured)
        assert 0 < out["num_divergent"] < 64
        # The chains kept lost at most the threshold's nats of ELBO.
        assert out["elbo_gap"] >= -DIVERGENCE_THRESHOLD
    for key in ("loss_actor", "loss_flow"):
        assert out[key].abs() < 1e3, (key, out[key])
    (out["loss_actor"] + out["loss_flow"] + out["loss_qvalue"]).backward()
    assert all(p.grad.isfinite().all() for p in loss.parameters() if p.grad is not None)
    # Acting uses the same guard: divergent chains act with their start u0.
    td = loss.actor(batch.select("observation"))
    divergent = td["hmc", "divergent"]
    assert divergent.any()
    torch.testing.assert_close(td["hmc", "uK"][divergent], td["hmc", "u0"][divergent])
    assert td["hmc", "uK"].abs().max() < 20.0


def test_the_loss_trains_on_the_first_draws_chains_that_did_not_diverge() -> None:
    # In float64: with 1/beta = 1e6 the chains are chaotic, and in float32 the matrix products'
    # rounding (which depends on the batch size, the thread count and the CPU) moves the rerun off
    # the first run by up to 1e-3 and changes which chains diverge (55 to 59 of 64 seen).
    loss, batch = _blown_up_loss("beta=1e-6", double=True)
    torch.manual_seed(5)
    out, states, num_divergent, _ = loss._chain(batch, None)
    torch.manual_seed(5)  # the first run of the chains, on every state, with the same draws
    critic = loss.qvalue_network_params.detach()
    acted = loss.actor.sample(batch, explore=True, create_graph=True, critic_params=critic)
    kept = ~acted.divergent
    assert 0 < int(num_divergent) == int(acted.divergent.sum()) < batch.shape[0]
    assert states.shape[0] == int(kept.sum()) and not out.divergent.any()
    # Rerun with the same draws: the very chains of the first run, minus the divergent ones (the
    # rounding of a batch of another size is ~1e-13 here; another draw would differ by O(1)).
    torch.testing.assert_close(out.uK, acted.uK[kept], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.rhoK, acted.rhoK[kept], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(states["observation"], batch["observation"][kept])


@pytest.mark.parametrize("update_mode", ["alternating", "joint"])
def test_an_all_divergent_batch_gives_zero_losses_and_the_count_never_nan(update_mode) -> None:
    loss = _relu_loss(update_mode)
    with torch.no_grad():
        loss.actor.flow.log_step_size.fill_(30.0)  # eps ~ 1e13: every chain swings out
    batch = _batch(batch=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = loss(batch)
    _assert_all_finite(out)
    assert out["num_divergent"].item() == 16
    terms = ["loss_actor"] + (["loss_flow"] if update_mode == "alternating" else [])
    for key in terms:
        assert out[key].item() == 0.0 and out[key].requires_grad
    # No chain was kept, so none measured the chain's diagnostics: they are left out, never
    # NaN (the mean over no sample) nor 0 (a measurement the PID or alpha would act on).
    chain_diagnostics = set(loss._DIAGNOSTICS) - {"beta", "num_divergent", "step_size", "td_error"}
    assert not chain_diagnostics & set(out.keys()) and out["beta"] == loss.beta
    # Zero gradients, not None, not NaN, on what each term would have reached.
    reached = {
        "loss_actor": list(loss.policy_parameters()),
        "loss_flow": list(loss.flow_parameters()),
    }
    if update_mode == "joint":
        reached["loss_actor"] += reached.pop("loss_flow")
    for key in terms:
        loss.zero_grad(set_to_none=True)
        out[key].backward(retain_graph=True)
        assert all(p.grad is not None and not p.grad.any() for p in reached[key]), key
