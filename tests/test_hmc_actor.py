"""HMCActor: TorchRL integration, exact bookkeeping, interaction modes, keys and errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import make_critic, make_policy
from tensordict import TensorDict, TensorDictParams
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import Bounded, Categorical, Unbounded
from torchrl.envs import DoubleToFloat, GymEnv, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import (
    MLP,
    NormalParamExtractor,
    ProbabilisticActor,
    TanhNormal,
    ValueOperator,
)

from torchrl_mcmc import HMCActor
from torchrl_mcmc.mcmc import HamiltonianFlow, normal_log_prob, squash


def _actor(obs_dim=3, action_dim=2, **kwargs) -> HMCActor:
    return HMCActor(make_policy(obs_dim, action_dim), make_critic(obs_dim, action_dim), **kwargs)


def _obs(batch=16, obs_dim=3) -> TensorDict:
    return TensorDict({"observation": torch.randn(batch, obs_dim)}, batch_size=[batch])


@pytest.mark.parametrize("env_name", ["Pendulum-v1", "Hopper-v4"])
def test_actor_in_collector_acts_in_bounds_with_finite_densities(env_name: str) -> None:
    env = TransformedEnv(GymEnv(env_name), DoubleToFloat())
    env.set_seed(0)
    obs_dim = env.observation_spec["observation"].shape[-1]
    action_dim = env.action_spec.shape[-1]
    actor = HMCActor(
        make_policy(
            obs_dim,
            action_dim,
            low=env.action_spec.space.low.min().item(),
            high=env.action_spec.space.high.max().item(),
        ),
        make_critic(obs_dim, action_dim),
        action_spec=env.action_spec,
        num_steps=5,
    )
    collector = Collector(env, actor, frames_per_batch=500, total_frames=1000)
    frames = 0
    low, high = env.action_spec.space.low, env.action_spec.space.high
    for batch in collector:
        frames += batch.numel()
        action = batch["action"]
        assert ((action >= low) & (action <= high)).all()
        assert batch["hmc", "u0_log_prob"].isfinite().all()
        assert batch["hmc", "uK"].isfinite().all() and batch["hmc", "rhoK"].isfinite().all()
        torch.testing.assert_close(action, squash(batch["hmc", "uK"], low, high))
        # The chain did move the base sample (K = 5 steps on a random critic and the prior).
        assert (batch["hmc", "uK"] - batch["hmc", "u0"]).abs().max() > 1e-4
        assert not batch["hmc", "divergent"].any()
        assert not action.requires_grad
    collector.shutdown()
    assert frames >= 1000


def test_deterministic_mode_is_deterministic_and_random_mode_is_not() -> None:
    actor = _actor()
    td = _obs()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        a = actor(td.clone())
        b = actor(td.clone())
    torch.testing.assert_close(a["action"], b["action"], rtol=0, atol=0)
    assert (a["hmc", "rho0"] == 0).all()
    dist = actor.policy.get_dist(td.clone())
    torch.testing.assert_close(a["hmc", "u0"], dist.base_dist.mean)
    with set_exploration_type(ExplorationType.RANDOM):
        c = actor(td.clone())
        d = actor(td.clone())
    assert not torch.equal(c["action"], d["action"])


def test_density_is_the_base_density_of_u0() -> None:
    actor = _actor()
    td = actor(_obs())
    base = actor.policy.get_dist(_obs().update(td.select("observation"))).base_dist
    expected = torch.distributions.Normal(base.mean, base.stddev).log_prob(td["hmc", "u0"])
    torch.testing.assert_close(td["hmc", "u0_log_prob"], expected.sum(-1))


def test_potential_matches_its_formula() -> None:
    actor = _actor(beta=0.7, prior="policy")
    td = _obs(batch=5)
    loc, scale = torch.randn(5, 2), torch.rand(5, 2) + 0.5
    u = torch.randn(5, 2)
    action = squash(u, actor.action_low, actor.action_high)
    q = actor.critic(td.clone().set("action", action))["state_action_value"].squeeze(-1)
    expected = -(q / 0.7 + normal_log_prob(u, loc, scale))
    torch.testing.assert_close(actor.potential_fn(td, loc, scale)(u), expected)


def test_zero_steps_is_the_plain_policy() -> None:
    actor = _actor(num_steps=0)
    td = actor(_obs())
    torch.testing.assert_close(td["hmc", "uK"], td["hmc", "u0"], rtol=0, atol=0)
    torch.testing.assert_close(td["action"], squash(td["hmc", "u0"], -1.0, 1.0))


def test_chain_lowers_the_potential_on_average() -> None:
    # From the prior's mode with zero momentum, a few small leapfrog steps descend U.
    actor = _actor(num_steps=3, step_size=0.05, gated=False)
    td = _obs(batch=256)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        out = actor.sample(td, explore=False)
    potential = actor.potential_fn(td, out.prior_loc, out.prior_scale)
    assert (potential(out.uK) < potential(out.u0)).float().mean() > 0.9


def test_training_sample_reaches_policy_and_flow_only() -> None:
    actor = _actor()
    critic_params = TensorDict.from_module(actor.critic).detach()
    out = actor.sample(_obs(), explore=True, create_graph=True, critic_params=critic_params)
    (out.uK.sum() + out.rhoK.pow(2).sum() + out.log_prob.sum()).backward()
    for name, p in actor.policy.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert actor.flow.log_step_size.grad.abs().sum() > 0
    for p in [*actor.critic.parameters(), *actor.prior.parameters()]:
        assert p.grad is None


def test_refresh_prior_copies_then_freezes() -> None:
    actor = _actor()
    with torch.no_grad():
        for p in actor.policy.parameters():
            p.add_(1.0)
    policy_p = list(actor.policy.parameters())
    prior_p = list(actor.prior.parameters())
    assert not any(torch.equal(a, b) for a, b in zip(policy_p, prior_p, strict=True))
    actor.refresh_prior()
    assert all(torch.equal(a, b) for a, b in zip(policy_p, prior_p, strict=True))
    assert not any(p.requires_grad for p in prior_p)
    assert all(a is not b for a, b in zip(policy_p, prior_p, strict=True))


def test_bound_critic_params_are_used_live() -> None:
    actor = _actor()
    base = TensorDict.from_module(actor.critic)
    params = TensorDictParams(
        torch.stack([base.data.clone(), base.data.clone().apply(lambda x: x + 0.3)]),
        no_convert=False,
    )
    actor.bind_critic_params(params)
    td, action = _obs(batch=6), torch.rand(6, 2) * 2 - 1
    values = []
    for i in range(2):
        with params[i].to_module(actor.critic):
            values.append(actor.critic(td.clone().set("action", action))["state_action_value"])
    expected = torch.minimum(*values).squeeze(-1)
    torch.testing.assert_close(actor.critic_value(td, action), expected)
    # An in-place update of the bound parameters (what an optimiser does) is seen at once.
    with torch.no_grad():
        for p in params.values(True, True):
            p.add_(0.1)
    assert not torch.allclose(actor.critic_value(td, action), expected)
    # ... and the bound params travel with the actor's state (weight sync, checkpoints).
    assert any("critic_params" in k for k in actor.state_dict())


def test_nested_and_renamed_keys() -> None:
    obs_key, action_key = ("agent", "obs"), ("agent", "act")
    policy = make_policy(3, 2, obs_key=obs_key, action_key=action_key)
    critic = make_critic(3, 2, obs_key=obs_key, action_key=action_key)
    actor = HMCActor(policy, critic, hmc_key=("agent", "chain"))
    assert actor.action_key == action_key
    td = TensorDict({"agent": {"obs": torch.randn(4, 3)}}, batch_size=[4])
    actor(td)
    assert td["agent", "act"].shape == (4, 2)
    assert td["agent", "chain", "uK"].shape == (4, 2)
    assert set(actor.out_keys) >= {action_key, ("agent", "chain", "u0_log_prob")}
    assert actor.in_keys == [obs_key]


def test_gates_can_read_the_state() -> None:
    actor = _actor(gate_state_key="observation", gate_state_dim=3)
    td = actor(_obs())
    assert td["action"].isfinite().all()
    assert actor.flow.gate.state_dim == 3


def test_unbatched_input() -> None:
    actor = _actor()
    td = actor(TensorDict({"observation": torch.randn(3)}, batch_size=[]))
    assert td["action"].shape == (2,) and td["hmc", "u0_log_prob"].shape == ()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda() -> None:
    actor = _actor().cuda()
    td = actor(_obs().cuda())
    assert td["action"].device.type == "cuda"


def _bad_policy_distribution():
    net = TensorDictModule(MLP(in_features=3, out_features=2), ["observation"], ["logits"])
    return ProbabilisticActor(
        net,
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        spec=Bounded(-1.0, 1.0, shape=(2,)),
    )


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: _actor(num_steps=-1), ValueError, "num_steps=-1"),
        (lambda: _actor(step_size=0.0), ValueError, "step_size=0.0"),
        (lambda: _actor(step_size=-1.0), ValueError, "step_size=-1.0"),
        (lambda: _actor(gate_hidden=0), ValueError, "gate_hidden=0"),
        (lambda: _actor(beta=0.0), ValueError, "beta=0.0"),
        (lambda: _actor(beta=1e-300), ValueError, "beta=1e-300 is too small"),  # 0 in float32
        (lambda: _actor(beta=1e39), ValueError, r"beta=1e\+39 is too large: it is inf"),
        # exp(log eps) in float32: 0 (a chain that never moves) or inf.
        (
            lambda: _actor(step_size=1e-50),
            ValueError,
            r"step_size=1e-50 is too small: it is 0.0 in torch.float32; step_size must lie "
            r"between 1.18e-38 and 3.4e\+38",
        ),
        (lambda: _actor(step_size=1e40), ValueError, r"step_size=1e\+40 is too large: it is inf"),
        (
            lambda: HamiltonianFlow(2, step_size=1e-50),
            ValueError,
            "step_size=1e-50 is too small",
        ),
        # A critic that is not a TensorDict module, or writes more than one value.
        (
            lambda: HMCActor(make_policy(3, 2), lambda td: td),
            TypeError,
            "the critic must be a TensorDict module .* got a function; wrap it in a ValueOperator",
        ),
        (
            lambda: HMCActor(
                make_policy(3, 2),
                ValueOperator(
                    MLP(in_features=5, out_features=2), in_keys=["observation", "action"]
                ),
            ),
            ValueError,
            "the critic's MLP has out_features=2; .* out_features=1",
        ),
        (lambda: _actor(action_spec=Unbounded(shape=(2,))), ValueError, "UnboundedContinuous"),
        (lambda: _actor(action_spec=Categorical(4)), ValueError, "Categorical"),
        (
            lambda: _actor(action_spec=Bounded(-float("inf"), 1.0, shape=(2,))),
            ValueError,
            "finite",
        ),
        (
            lambda: HMCActor(make_policy(3, 2), make_critic(3, 2, action_key="other")),
            ValueError,
            "'action'",
        ),
        (
            lambda: HMCActor(make_policy(3, 2).module[0], make_critic(3, 2)),
            TypeError,
            "ProbabilisticTensorDictSequential",
        ),
        (
            lambda: HMCActor(_bad_policy_distribution(), make_critic(3, 2)),
            ValueError,
            "Categorical",
        ),
        (lambda: _actor(gate_state_key="observation"), ValueError, "gate_state_dim"),
        # A bool is no number here: num_steps=True is a mistake, not K = 1.
        (lambda: _actor(num_steps=True), TypeError, "num_steps=True"),
        (lambda: _actor(gate_hidden=True), TypeError, "gate_hidden=True"),
        (
            lambda: _actor(gate_state_key="observation", gate_state_dim=True),
            TypeError,
            "gate_state_dim=True",
        ),
        (lambda: _actor(beta=True), TypeError, "beta=True"),
        (lambda: _actor(step_size=True), TypeError, "step_size=True"),
        (lambda: _actor(gated=1), ValueError, "gated=1"),
        # An action spec of another dimension than the policy's.
        (
            lambda: HMCActor(
                make_policy(3, 2), make_critic(3, 3), action_spec=Bounded(-1.0, 1.0, shape=(3,))
            ),
            ValueError,
            r"the action spec's dimension 3 is not that of the policy's spec, \(2,\)",
        ),
    ],
)
def test_bad_construction_fails_fast_with_a_clear_message(build, error, match) -> None:
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_steps": True}, "num_steps=True"),
        ({"gate_hidden": False}, "gate_hidden=False"),
        ({"beta": True}, "beta=True"),
        ({"step_size": True}, "step_size=True"),
        ({"pessimism": True, "potential_critic": "mean_std"}, "pessimism=True"),
    ],
)
def test_a_bool_is_no_number_but_a_type_error(kwargs, match) -> None:
    with pytest.raises(TypeError, match=match):
        _actor(**kwargs)


def test_bind_rejects_unbatched_params() -> None:
    actor = _actor()
    with pytest.raises(ValueError, match="leading critic dimension"):
        actor.bind_critic_params(TensorDictParams(TensorDict.from_module(actor.critic)))


def test_works_under_no_grad_and_inference_contexts() -> None:
    actor = _actor()
    with torch.no_grad():
        td = actor(_obs())
    assert td["action"].isfinite().all()
    assert all(p.grad is None for p in actor.parameters())
    assert isinstance(actor.flow, nn.Module)


def _policy_without_spec(action_dim: int) -> ProbabilisticActor:
    net = nn.Sequential(MLP(in_features=3, out_features=2 * action_dim), NormalParamExtractor())
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
    )


def test_a_policy_of_another_dimension_than_the_spec_fails_naming_both() -> None:
    # Nothing at construction says what the policy outputs: the first call does, before the
    # chain's matmuls would fail on it.
    actor = HMCActor(
        _policy_without_spec(2), make_critic(3, 3), action_spec=Bounded(-1.0, 1.0, shape=(3,))
    )
    message = r"the policy's action has dimension 2, but the action spec's is 3"
    with pytest.raises(ValueError, match=message):
        actor(_obs())
    with pytest.raises(ValueError, match=message):
        actor.base_sample(_obs())


def test_settings_a_configuration_ignores_are_reported() -> None:
    flow = HamiltonianFlow(2, num_steps=3)
    with pytest.warns(UserWarning, match=r"num_steps=2, gated=False ignored: the prebuilt flow"):
        actor = _actor(flow=flow, num_steps=2, gated=False)
    assert actor.flow is flow and actor.flow.num_steps == 3
    with pytest.warns(UserWarning, match=r"gate_hidden=8 ignored: gated=False builds no gates"):
        _actor(gated=False, gate_hidden=8)
    with pytest.warns(UserWarning, match=r"gate_state_dim=3 ignored: the gates read no state"):
        _actor(gate_state_dim=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults, and settings that are used: silent
        _actor(flow=HamiltonianFlow(2, num_steps=3))
        _actor(gated=False)
        _actor(gate_state_key="observation", gate_state_dim=3)


def test_divergences_are_logged_at_once_then_at_most_once_an_interval(monkeypatch, caplog) -> None:
    """A chain that diverges at every call logs its first loss at once, then one line per
    interval with what it lost in between: not a line per action and per update."""
    clock = [1000.0]
    monkeypatch.setattr("torchrl_mcmc.modules.common.time.monotonic", lambda: clock[0])
    actor = _actor()
    flags = torch.tensor([True, False, True, False])
    with caplog.at_level("WARNING", logger="torchrl_mcmc"):
        for seconds in (0.0, 10.0, 20.0, 59.0, 61.0, 62.0):
            clock[0] = 1000.0 + seconds
            actor._warn_divergent(flags, "HMC chain")
        actor._warn_divergent(torch.zeros(4, dtype=torch.bool), "HMC chain")  # none: no count
    assert [r.getMessage() for r in caplog.records] == [
        "HMC chain diverged for 2 of 4 samples; they fall back to u0 (further divergences are "
        "logged at most every 60 s).",
        # The calls at 10, 20, 59 and 61 s: 4 calls, 8 samples, logged at 61 s.
        "HMC chain diverged in 4 calls over the last 61 s, for 8 samples (2 of 4 in the "
        "latest); they fall back to u0.",
    ]
