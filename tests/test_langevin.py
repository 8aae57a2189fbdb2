"""The Langevin flow, LangevinFlowActor and LangevinFlowLoss: exact steps, bounds, isolation."""

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
    make_td3_policy,
    make_transitions,
    mcmc_parameter_groups,
)
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import Bounded, Unbounded
from torchrl.envs import DoubleToFloat, GymEnv, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, AdditiveGaussianModule, TanhModule, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_mcmc import HMCActor, LangevinFlowActor, LangevinFlowLoss, PIDController
from torchrl_mcmc.mcmc import LangevinCoupling, LangevinFlow, smoothed_norm, squash

OBS, ACT = 4, 2


class QuadraticCritic(nn.Module):
    """``Q(s, a) = -scale * ||a - tanh(s W)||^2``: a critic with a known gradient."""

    def __init__(self, obs_dim: int, action_dim: int, scale: float = 3.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(obs_dim, action_dim))
        self.scale = scale

    def optimum(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(obs @ self.weight)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return -self.scale * (action - self.optimum(obs)).pow(2).sum(-1, keepdim=True)


def _actor(obs_dim=OBS, action_dim=ACT, *, low=-1.0, high=1.0, critic=None, **kwargs):
    critic = make_critic(obs_dim, action_dim) if critic is None else critic
    policy = make_td3_policy(obs_dim, action_dim, low=low, high=high)
    return LangevinFlowActor(policy, critic, state_dim=obs_dim, **kwargs)


def _loss(**kwargs) -> LangevinFlowLoss:
    loss = LangevinFlowLoss(_actor(num_layers=3), **kwargs)
    loss.make_value_estimator(gamma=0.99)
    return loss


def _obs(batch=16, obs_dim=OBS, dtype=torch.float32) -> TensorDict:
    return TensorDict({"observation": torch.randn(batch, obs_dim, dtype=dtype)}, batch_size=[batch])


def _batch(batch: int = 32) -> TensorDict:
    return make_transitions(OBS, ACT, batch)


def _perturb(module: nn.Module, by: float = 0.3) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(by * torch.randn_like(p))


# ---------------------------------------------------------------------------- must-show 1
def test_flow_with_zero_nets_and_no_langevin_term_is_the_identity() -> None:
    flow = LangevinFlow(3, num_layers=4, step_size=0.7, state_dim=2).double()
    with torch.no_grad():
        for layer in flow.layers:
            for p in layer.net.parameters():
                p.zero_()
    u0, state = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)

    def flat(u):  # grad U = 0: the Langevin term vanishes
        return 0.0 * u.sum(-1)

    out = flow(u0, flat, state=state)
    torch.testing.assert_close(out.position, u0, rtol=0, atol=0)
    # Not vacuous: any non-zero output of sigma, S or T moves the free half.
    for block in range(3):
        with torch.no_grad():
            bias = flow.layers[0].net[-1].bias
            bias.zero_()
            bias[block * 2] = 0.5  # layer 0 of d=3 moves coordinates 0 and 2
        moved = flow(u0, flat, state=state).position
        assert (moved[:, 0] - u0[:, 0]).abs().min() > 1e-3, block
        torch.testing.assert_close(moved[:, 1:], u0[:, 1:], rtol=0, atol=0)


def test_one_layer_is_one_explicit_ascent_step_on_the_potential_by_hand() -> None:
    # One layer, fresh nets (sigma = S = T = 0): y = m x + mbar (x + eps^2/2 grad_u U(x)) with
    # U(u) = Q(s, squash(u)) / beta - ||squash(u) - pi_t(s)||_delta, computed here by hand.
    low, high, beta, delta, eps = -0.5, 1.5, 0.7, 0.05, 0.4
    critic_net = QuadraticCritic(OBS, 3)
    critic = ValueOperator(critic_net, in_keys=["observation", "action"])
    actor = _actor(
        action_dim=3,
        low=low,
        high=high,
        critic=critic,
        num_layers=1,
        step_size=eps,
        beta=beta,
        distance_smoothing=delta,
    ).double()
    _perturb(actor.policy)  # so that the prior differs from the policy and its term is non-zero
    td = _obs(dtype=torch.float64)
    out = actor.sample(td)

    # The float32 roundings of 0.7 and log(0.4), carried over by .double():
    beta, eps = actor.beta, actor.flow.layers[0].step_size.detach()
    obs = td["observation"]
    u = actor.policy(td.clone())["param"]
    prior = squash(actor.prior(td.clone())["param"], low, high)
    action = low + (high - low) * (torch.tanh(u) + 1) / 2
    dq_da = -2 * critic_net.scale * (action - critic_net.optimum(obs))
    diff = action - prior
    ddist_da = diff / (diff.pow(2).sum(-1, keepdim=True) + delta**2).sqrt()
    du = (high - low) / 2 * (1 - torch.tanh(u) ** 2)
    grad_u = du * (dq_da / beta - ddist_da)
    expected = u.clone()
    free = [0, 2]  # layer 0 conditions on coordinate 1 and moves 0 and 2
    expected[:, free] = u[:, free] + eps**2 / 2 * grad_u[:, free]

    torch.testing.assert_close(out.u0, u, rtol=0, atol=0)
    torch.testing.assert_close(out.uK, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.action, squash(expected, low, high))
    assert (out.uK[:, free] - u[:, free]).abs().min() > 1e-4


def test_flow_climbs_the_potential_on_average() -> None:
    actor = _actor(critic=ValueOperator(QuadraticCritic(OBS, ACT), ["observation", "action"]))
    _perturb(actor.policy)
    td = _obs(batch=256)
    out = actor.sample(td)
    potential = actor.potential_fn(td, out.prior_action)
    assert (potential(out.uK) > potential(out.u0)).float().mean() > 0.9


def test_zero_layers_is_the_plain_td3_actor() -> None:
    actor = _actor(num_layers=0)
    td = _obs()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        out = actor(td.clone())
    torch.testing.assert_close(out["flow", "uK"], out["flow", "u0"], rtol=0, atol=0)
    torch.testing.assert_close(out["action"], actor.policy(td.clone())["action"])
    assert actor.flow.step_size.shape == (0,)


def test_coupling_layer_rejects_an_empty_conditioner() -> None:
    with pytest.raises(ValueError, match="state_dim > 0"):
        LangevinCoupling(torch.tensor([False]))
    with pytest.raises(ValueError, match="at least one False"):
        LangevinCoupling(torch.tensor([True, True]))
    assert smoothed_norm(torch.zeros(1, 3), 0.1).item() == 0.0


# ---------------------------------------------------------------------------- must-show 2
@pytest.mark.parametrize("action_dim", [1, 3, 6, 8, 17])
def test_every_action_dim_moves_and_stays_in_bounds(action_dim: int) -> None:
    low, high = -0.4, 1.2
    critic = make_critic(OBS, action_dim)
    with torch.no_grad():
        critic.module[-1].weight.mul_(200.0)  # a steep critic that pushes actions to the walls
    actor = _actor(
        action_dim=action_dim, low=low, high=high, critic=critic, num_layers=2, step_size=0.5
    )
    td = _obs(batch=64)
    for mode in (ExplorationType.RANDOM, ExplorationType.DETERMINISTIC):
        with set_exploration_type(mode):
            out = actor(td.clone())
        action = out["action"]
        assert action.shape == (64, action_dim)
        assert action.isfinite().all() and ((action >= low) & (action <= high)).all()
        assert not out["flow", "divergent"].any()
    # Two layers with alternating masks move every coordinate (d = 1: the state conditions).
    assert ((out["flow", "uK"] - out["flow", "u0"]).abs() > 1e-6).all()


# ---------------------------------------------------------------------------- must-show 3
@pytest.mark.parametrize(("mode", "key", "reached"), LOSS_TERM_CASES)
def test_each_loss_reaches_exactly_its_parameters(mode: str, key: str, reached: set) -> None:
    loss = _loss(update_mode=mode)
    # Right after a refresh a0 == pi_t(s) exactly, where the plain norm has no gradient: the
    # smoothed norm keeps every gradient finite (which assert_term_reaches_exactly checks).
    loss.refresh_prior()
    targets = (
        loss.target_actor_network_params,
        loss.target_flow_network_params,
        loss.target_qvalue_network_params,
    )
    groups = mcmc_parameter_groups(
        loss,
        flow=loss.flow_parameters(),
        target=[p for t in targets for p in t.values(True, True)],
    )
    assert_term_reaches_exactly(loss, _batch(), key, reached, groups)


def test_smoothing_keeps_the_policy_gradient_at_the_scale_of_td3s() -> None:
    # Right after a refresh the flow starts on the prior, where the regulariser's curvature is
    # 1 / delta; every layer's Jacobian carries it into the policy gradient.
    norms = {}
    for delta in (1e-6, 1e-2):
        torch.manual_seed(0)
        actor = _actor(num_layers=4, distance_smoothing=delta)
        loss = LangevinFlowLoss(actor, update_mode="joint")
        loss.actor_loss(_batch(64))[0].backward()
        norms[delta] = sum(p.grad.norm() ** 2 for p in loss.policy_parameters()) ** 0.5
    torch.manual_seed(0)
    plain = LangevinFlowLoss(_actor(num_layers=0))  # K = 0: TD3's own actor gradient
    plain.actor_loss(_batch(64))[0].backward()
    td3 = sum(p.grad.norm() ** 2 for p in plain.policy_parameters()) ** 0.5
    assert norms[1e-2] < 10 * td3
    assert norms[1e-6] > 100 * norms[1e-2]


def test_joint_mode_has_no_separate_flow_loss() -> None:
    out = _loss(update_mode="joint")(_batch())
    assert "loss_flow" not in out
    assert {"beta", "policy_distance", "critic_gain", "step_size", "num_divergent"} <= set(
        out.keys()
    )


# ---------------------------------------------------------------------------- the loss's numbers
def test_objective_and_diagnostics_match_eq_10_by_hand() -> None:
    loss = _loss()
    loss.beta = 0.3
    _perturb(loss.actor.policy)
    batch = _batch()
    out, states, _, _ = loss._flow(batch, None)
    q = loss.actor.critic_value(states, out.action)  # the actor's path to the trained critics
    gap = out.action - out.prior_action
    delta = loss.actor.distance_smoothing
    expected = q - loss.beta * ((gap**2).sum(-1) + delta**2).sqrt() + loss.beta * delta
    objective, q_end = (t.detach() for t in loss._objective(states, out))
    torch.testing.assert_close(q_end, q.detach())
    torch.testing.assert_close(objective, expected.detach())
    # J = beta * U(uK): the flow ascends exactly what the objective scores.
    potential = loss.actor.potential_fn(states, out.prior_action)
    torch.testing.assert_close(objective, (loss.beta * potential(out.uK)).detach())
    meta = loss._diagnostics(states, out, q_end)
    torch.testing.assert_close(meta["policy_distance"], gap.norm(dim=-1).mean().detach())
    q0 = loss.actor.critic_value(states, squash(out.u0, -1.0, 1.0))
    torch.testing.assert_close(meta["critic_gain"], (q - q0).mean().detach())
    torch.testing.assert_close(meta["step_size"], torch.tensor(0.1))


def test_td_target_is_td3s_with_target_policy_and_target_flow() -> None:
    loss = _loss(policy_noise=0.0)
    loss.make_value_estimator(gamma=0.9)
    batch = _batch()
    next_td = batch["next"]
    # Target copies are what the target action uses: move them away from the current ones.
    with torch.no_grad():
        for params in (loss.target_actor_network_params, loss.target_flow_network_params):
            for p in params.values(True, True):
                if p.dtype.is_floating_point:
                    p.add_(0.2 * torch.randn_like(p))
    with (
        loss.target_actor_network_params.detach().to_module(loss.actor.policy),
        loss.target_flow_network_params.detach().to_module(loss.actor.flow),
    ):
        slow = loss.actor.sample(next_td).action
    fast = loss.actor.sample(next_td).action
    next_action = loss._next_action(next_td)
    torch.testing.assert_close(next_action, slow)
    assert not torch.allclose(next_action, fast)
    # r + gamma * min_j Q'_j(s', a'), by hand, against the critics' regression target.
    next_q = loss._qvalues(next_td, slow, loss.target_qvalue_network_params).min(0).values
    target = next_td["reward"].squeeze(-1) + 0.9 * next_q
    pred = loss._qvalues(batch, batch["action"], loss.qvalue_network_params)
    expected = ((pred - target) ** 2).sum(0).mean()
    torch.testing.assert_close(loss.qvalue_loss(batch)[0], expected)


def test_target_smoothing_noise_is_clipped_and_in_bounds() -> None:
    actor = _actor(low=-2.0, high=2.0, num_layers=2)
    loss = LangevinFlowLoss(actor, policy_noise=10.0, noise_clip=0.05, delay_actor=False)
    next_td = _obs(batch=512)
    clean = actor.sample(next_td).action
    noisy = loss._next_action(next_td)
    shift = (noisy - clean).abs()
    assert shift.max() <= 0.05 * 2.0 + 1e-6  # clip in units of the half-width (2)
    assert shift.max() > 0.09 and ((noisy >= -2) & (noisy <= 2)).all()


def test_soft_update_moves_every_target_including_the_flow() -> None:
    loss = _loss()
    updater = SoftUpdate(loss, eps=0.5)
    pairs = [
        (loss.flow_network_params, loss.target_flow_network_params),
        (loss.actor_network_params, loss.target_actor_network_params),
        (loss.qvalue_network_params, loss.target_qvalue_network_params),
    ]
    before = [target.clone() for _, target in pairs]
    with torch.no_grad():
        for source, _ in pairs:
            for p in source.values(True, True):
                if isinstance(p, nn.Parameter):
                    p.add_(1.0)
    updater.step()
    for (source, target), old in zip(pairs, before, strict=True):
        for key, p in source.items(True, True):
            if isinstance(p, nn.Parameter):
                torch.testing.assert_close(target[key], 0.5 * (old[key] + p.detach()))


# ---------------------------------------------------------------------------- the actor in TorchRL
def test_actor_in_collector_on_pendulum_acts_in_bounds() -> None:
    env = TransformedEnv(GymEnv("Pendulum-v1"), DoubleToFloat())
    env.set_seed(0)
    actor = LangevinFlowActor(
        make_td3_policy(3, 1, low=-2.0, high=2.0),
        make_critic(3, 1),
        state_dim=3,
        action_spec=env.action_spec,
    )
    collector = Collector(
        env, actor, frames_per_batch=250, total_frames=500, auto_register_policy_transforms=False
    )
    frames = 0
    low, high = env.action_spec.space.low, env.action_spec.space.high
    for batch in collector:
        frames += batch.numel()
        action, uK = batch["action"], batch["flow", "uK"]
        assert ((action >= low) & (action <= high)).all() and not action.requires_grad
        assert uK.isfinite().all() and not batch["flow", "divergent"].any()
        assert (uK - batch["flow", "u0"]).abs().max() > 1e-4  # the flow did move
        noise = action - squash(uK, low, high)  # the collector explores (RANDOM): TD3 noise
        assert 0.05 < noise.std().item() / 2.0 < 0.2
    collector.shutdown()
    assert frames == 500


def test_deterministic_mode_is_deterministic_and_random_mode_explores() -> None:
    actor = _actor()
    td = _obs(batch=1024)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        a = actor(td.clone())
        b = actor(td.clone())
    torch.testing.assert_close(a["action"], b["action"], rtol=0, atol=0)
    torch.testing.assert_close(a["action"], squash(a["flow", "uK"], -1.0, 1.0), rtol=0, atol=0)
    torch.testing.assert_close(a["flow", "u0"], actor.policy(td.clone())["param"])
    for mode in (ExplorationType.RANDOM, None):  # no type set: noise, as AdditiveGaussianModule
        if mode is None:
            c = actor(td.clone())
        else:
            with set_exploration_type(mode):
                c = actor(td.clone())
        noise = c["action"] - a["action"]
        inside = c["action"].abs() < 1.0  # not clamped
        assert noise.abs().max() > 0 and abs(noise[inside].std().item() - 0.1) < 0.01
    actor.exploration_noise.fill_(0.0)  # annealed in place, down to none
    with set_exploration_type(ExplorationType.RANDOM):
        d = actor(td.clone())
    torch.testing.assert_close(d["action"], a["action"], rtol=0, atol=0)


def test_actor_acts_with_the_trained_critic() -> None:
    loss = _loss()
    actor = loss.actor
    batch = _batch()
    states, action = batch.select("observation"), torch.rand(32, ACT) * 2 - 1
    before = actor.critic_value(states, action)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        act_before = actor(states.clone())["action"]
    optim = torch.optim.Adam(loss.critic_parameters(), lr=1e-2)
    optim.zero_grad()
    loss.qvalue_loss(batch)[0].backward()
    optim.step()
    after = actor.critic_value(states, action)
    assert not torch.allclose(after, before)
    trained = loss._qvalues(states, action, loss.qvalue_network_params).min(0).values
    torch.testing.assert_close(after, trained)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        act_after = actor(states.clone())["action"]
    assert not torch.allclose(act_after, act_before)  # the flow follows the new critic
    assert any("critic_params" in k for k in actor.state_dict())


def test_refresh_prior_copies_then_freezes() -> None:
    actor = _actor()
    _perturb(actor.policy)
    policy_p, prior_p = list(actor.policy.parameters()), list(actor.prior.parameters())
    assert not any(torch.equal(a, b) for a, b in zip(policy_p, prior_p, strict=True))
    actor.refresh_prior()
    assert all(torch.equal(a, b) for a, b in zip(policy_p, prior_p, strict=True))
    assert not any(p.requires_grad for p in prior_p)


def test_beta_is_shared_schedulable_and_checkpointed() -> None:
    loss = _loss()
    loss.beta = 0.25
    assert loss.actor.beta.item() == 0.25 and loss(_batch())["beta"].item() == 0.25
    other = _loss()
    other.load_state_dict(loss.state_dict())
    assert other.beta.item() == 0.25
    with pytest.raises(ValueError, match="beta"):
        loss.beta = 0.0


def test_nested_keys_and_unbatched_input() -> None:
    obs, act = ("agent", "obs"), ("agent", "act")
    policy = make_td3_policy(OBS, ACT, obs_key=obs, action_key=act)
    actor = LangevinFlowActor(
        policy, make_critic(OBS, ACT, obs_key=obs, action_key=act), state_dim=OBS, flow_key="lf"
    )
    assert actor.action_key == act and actor.state_key == obs and actor.in_keys == [obs]
    td = actor(TensorDict({"agent": {"obs": torch.randn(OBS)}}, batch_size=[]))
    assert td["agent", "act"].shape == (ACT,) and td["lf", "uK"].shape == (ACT,)


# ---------------------------------------------------------------------------- a training loop
PID = {"target": 0.05, "kp": 2.0, "ki": 0.5, "beta_init": 1.0, "beta_min": 0.05, "beta_max": 20.0}


@pytest.mark.parametrize("mode", ["alternating", "joint"])
def test_plain_td3_loop_with_delayed_updates_and_pid(mode: str) -> None:
    loss = _loss(update_mode=mode)
    updater = SoftUpdate(loss, eps=0.9)
    optim_critic = torch.optim.Adam(loss.critic_parameters(), lr=1e-3)
    optim_policy = torch.optim.Adam(loss.policy_parameters(), lr=1e-3)
    optim_flow = torch.optim.Adam(loss.flow_parameters(), lr=1e-3)
    target_flow = loss.target_flow_network_params.clone()
    pid, policy_delay, step = PIDController(**PID), 2, 0
    betas, distances = [], []
    for _ in range(4):  # policy iterations (one collected batch each)
        loss.refresh_prior()
        batch_distances = []
        for _ in range(4):  # SGD steps
            batch = _batch()
            loss_q, _ = loss.qvalue_loss(batch)
            optim_critic.zero_grad()
            loss_q.backward()
            optim_critic.step()
            step += 1
            if step % policy_delay:
                continue
            loss_actor, meta = loss.actor_loss(batch)
            optim_policy.zero_grad()
            if mode == "joint":
                optim_flow.zero_grad()
            loss_actor.backward()
            optim_policy.step()
            if mode == "joint":
                optim_flow.step()
            else:  # eq. 11: h moves at the new theta
                loss_flow, _ = loss.flow_loss(batch)
                optim_flow.zero_grad()
                loss_flow.backward()
                optim_flow.step()
                assert loss_flow.isfinite()
            updater.step()
            assert loss_q.isfinite() and loss_actor.isfinite()
            assert all(v.isfinite() for v in meta.values())
            batch_distances.append(meta["policy_distance"].item())
        distances.append(sum(batch_distances) / len(batch_distances))
        loss.beta = pid.update(distances[-1])
        betas.append(loss.beta.item())
    replay = PIDController(**PID)
    assert betas == pytest.approx([replay.update(d) for d in distances], rel=1e-6)
    assert all(PID["beta_min"] <= b <= PID["beta_max"] for b in betas) and len(set(betas)) > 1
    assert all(d > 0 for d in distances)
    new_flow = loss.target_flow_network_params
    moved = [
        (new_flow[k] - v).abs().sum()
        for k, v in target_flow.items(True, True)
        if v.is_floating_point()
    ]
    assert sum(moved) > 0  # the target flow follows the trained flow


# ---------------------------------------------------------------------------- errors
def _with_exploration_module() -> TensorDictSequential:
    policy = make_td3_policy(OBS, ACT)
    return TensorDictSequential(*policy.module, AdditiveGaussianModule(Bounded(-1, 1, (ACT,))))


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: _actor(num_layers=-1), ValueError, "num_layers=-1"),
        (lambda: _actor(step_size=0.0), ValueError, "step_size=0.0"),
        (lambda: _actor(hidden=0), ValueError, "hidden=0"),
        (lambda: _actor(scale_bound=-1.0), ValueError, "scale_bound=-1.0"),
        (lambda: _actor(beta=0.0), ValueError, "beta=0.0"),
        (lambda: _actor(beta=1e-300), ValueError, "beta=1e-300 is too small"),  # 0 in float32
        (lambda: _actor(beta=1e39), ValueError, r"beta=1e\+39 is too large: it is inf"),
        # exp(log eps) in float32: 0 (a flow that never moves) or inf.
        (
            lambda: _actor(step_size=1e-50),
            ValueError,
            r"step_size=1e-50 is too small: it is 0.0 in torch.float32; step_size must lie "
            r"between 1.18e-38 and 3.4e\+38",
        ),
        (lambda: _actor(step_size=1e40), ValueError, r"step_size=1e\+40 is too large: it is inf"),
        (
            lambda: LangevinCoupling(torch.tensor([False, True]), step_size=1e-50),
            ValueError,
            "step_size=1e-50 is too small",
        ),
        (
            lambda: LangevinFlowActor(make_td3_policy(OBS, ACT), nn.Linear(6, 1), state_dim=OBS),
            TypeError,
            "the critic must be a TensorDict module .* got a Linear",
        ),
        (lambda: _actor(distance_smoothing=0.0), ValueError, "distance_smoothing=0.0"),
        (lambda: _actor(exploration_noise=-0.1), ValueError, "exploration_noise=-0.1"),
        (lambda: _actor(action_spec=Unbounded(shape=(ACT,))), ValueError, "UnboundedContinuous"),
        (lambda: _actor(action_spec=Bounded(-2.0, 2.0, (ACT,))), ValueError, "TanhModule maps"),
        (
            lambda: LangevinFlowActor(make_td3_policy(OBS, 1), make_critic(OBS, 1), state_dim=0),
            ValueError,
            "state_dim > 0",
        ),
        (
            lambda: LangevinFlowActor(make_td3_policy(OBS, ACT), make_critic(OBS, ACT)),
            ValueError,
            "state_dim is required",
        ),
        (
            lambda: LangevinFlowActor(
                make_td3_policy(OBS, ACT), make_critic(OBS, ACT, action_key="other"), state_dim=1
            ),
            ValueError,
            "'action'",
        ),
        (
            lambda: LangevinFlowActor(make_policy(OBS, ACT), make_critic(OBS, ACT), state_dim=1),
            TypeError,
            "ProbabilisticActor",
        ),
        (
            lambda: LangevinFlowActor(
                _with_exploration_module(), make_critic(OBS, ACT), state_dim=OBS
            ),
            TypeError,
            "AdditiveGaussianModule",
        ),
        (
            lambda: LangevinFlowActor(
                make_td3_policy(OBS, ACT), make_critic(OBS, ACT), flow=LangevinFlow(3, state_dim=1)
            ),
            ValueError,
            "flow.action_dim=3",
        ),
        # A bool is no number here.
        (lambda: _actor(num_layers=True), TypeError, "num_layers=True"),
        (lambda: _actor(hidden=True), TypeError, "hidden=True"),
        (
            lambda: LangevinFlowActor(
                make_td3_policy(OBS, ACT), make_critic(OBS, ACT), state_dim=True
            ),
            TypeError,
            "state_dim=True",
        ),
        (lambda: _actor(exploration_noise=False), TypeError, "exploration_noise=False"),
        # An action spec of another dimension than the policy's TanhModule.
        (
            lambda: _actor(action_spec=Bounded(-1.0, 1.0, (ACT + 1,))),
            ValueError,
            f"the action spec's dimension {ACT + 1} is not that of the policy's TanhModule, {ACT}",
        ),
    ],
)
def test_bad_actor_arguments_fail_fast_with_a_clear_message(build, error, match) -> None:
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"update_mode": "sequential"}, "update_mode='sequential'"),
        ({"num_qvalue_nets": 0}, "num_qvalue_nets"),
        ({"loss_function": "huber"}, "huber"),
        ({"policy_noise": -0.2}, "policy_noise=-0.2"),
        ({"noise_clip": float("nan")}, "noise_clip=nan"),
    ],
)
def test_bad_loss_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        LangevinFlowLoss(_actor(), **kwargs)
    with pytest.raises(TypeError, match="HMCActor"):
        LangevinFlowLoss(HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT)))


@pytest.mark.parametrize("name", ["num_qvalue_nets", "policy_noise", "noise_clip"])
def test_a_bool_where_a_number_is_expected_is_a_type_error_naming_it(name) -> None:
    actor = _actor()
    with pytest.raises(TypeError, match=f"{name}.*got {name}=True"):
        LangevinFlowLoss(actor, **{name: True})
    assert actor.critic_params is None  # raised before anything was built


def test_a_batch_without_next_raises_a_key_error_naming_the_missing_entries() -> None:
    loss = _loss()
    with pytest.raises(KeyError, match=r"LangevinFlowLoss: the batch has no \('next', 'obs"):
        loss.qvalue_loss(_batch(4).exclude("next"))
    with pytest.raises(KeyError, match="LangevinFlowLoss: the batch has no 'observation' entry"):
        loss.actor_loss(_batch(4).exclude("observation"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda() -> None:
    loss = _loss().cuda()
    out = loss(_batch().cuda())
    assert out["loss_actor"].device.type == "cuda"
    assert loss.actor(_obs().cuda())["action"].device.type == "cuda"


# ---------------------------------------------------------------------------- the fast critic path
def _relu_critic(obs_dim: int = OBS, action_dim: int = ACT, activation=nn.ReLU) -> ValueOperator:
    from torchrl.modules import MLP

    net = MLP(
        in_features=obs_dim + action_dim,
        out_features=1,
        num_cells=[32, 32],
        activation_class=activation,
    )
    return ValueOperator(net, in_keys=["observation", "action"])


def _fast_and_generic(update_mode: str = "alternating", dtype=torch.float64):
    """Two identical LangevinFlowLosses on a ReLU critic, with perturbed policy, prior and flow
    networks: one takes the fast paths, the other is forced onto the generic TensorDict + vmap +
    autograd path. (Built twice from one seed: a deepcopy of a loss would not keep its policy's
    parameters shared with the loss's.)"""

    def build() -> LangevinFlowLoss:
        with torch.random.fork_rng():
            torch.manual_seed(11)
            actor = _actor(critic=_relu_critic(), num_layers=4, step_size=0.4, beta=0.3)
            _perturb(actor.flow, by=0.2)  # non-zero sigma, S, T: every term of a layer counts
            loss = LangevinFlowLoss(actor, update_mode=update_mode).to(dtype)
            loss.make_value_estimator(gamma=0.99)
            _perturb(loss.actor.policy, by=0.1)  # the prior (a snapshot) now differs from it
        return loss

    fast, generic = build(), build()
    # Force the TensorDict + vmap + autograd path, for the critic and the policy alike.
    generic.actor._fast_critic = None
    generic.actor._plain_policy = False
    assert fast.actor.has_fast_critic and fast.actor._plain_policy
    assert not generic.actor.has_fast_critic
    states = [loss.state_dict() for loss in (fast, generic)]
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, states[1][key], rtol=0, atol=0)
        else:  # a module's saved settings
            assert value == states[1][key], key
    return fast, generic


@pytest.mark.parametrize("update_mode", ["alternating", "joint"])
@pytest.mark.parametrize("batch_size", [8, 96])  # < and >= 64 states: both picked-critic branches
def test_fast_relu_critic_path_equals_the_generic_path(update_mode: str, batch_size: int) -> None:
    fast, generic = _fast_and_generic(update_mode)
    batch = _batch(batch_size).apply(lambda x: x.double() if x.is_floating_point() else x)
    outputs, grads = losses_and_grads((fast, generic), batch)  # same target-smoothing noise
    keys = set(outputs[0].keys(True, True))
    assert keys == set(outputs[1].keys(True, True))
    for key in keys:
        torch.testing.assert_close(outputs[0][key], outputs[1][key], rtol=1e-10, atol=1e-12)
    assert outputs[0]["critic_gain"].abs() > 0  # the flow moved: not a vacuous comparison
    # Every trained group receives a gradient, equal on both paths.
    assert grads[0].keys() == grads[1].keys()
    for group in (fast.policy_parameters(), fast.flow_parameters(), fast.critic_parameters()):
        group = list(group)
        names = {n for n, p in fast.named_parameters() if any(p is q for q in group)}
        assert names and names <= grads[0].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-11)


def test_fast_path_flow_outputs_and_actions_equal_the_generic_ones() -> None:
    fast, generic = _fast_and_generic()
    td = _obs(batch=80, dtype=torch.float64)
    # Training's flow (graph kept, detached critics) and acting's flow (no graph): the same
    # end points, and the same derivatives of the end points w.r.t. theta and h.
    for create_graph in (True, False):
        samples, grads = [], []
        for loss in (fast, generic):
            critic = loss.qvalue_network_params.detach()
            out = loss.actor.sample(td, create_graph=create_graph, critic_params=critic)
            samples.append(out)
            if create_graph:
                params = [*loss.policy_parameters(), *loss.flow_parameters()]
                grads.append(torch.autograd.grad(out.uK.pow(2).sum(), params))
        for a, b in zip(*samples, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert (samples[0].uK - samples[0].u0).abs().max() > 1e-3
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # Critics that require gradients (not what the losses pass, but allowed): the fast path
    # keeps grad_a Q's graph to the critics' parameters, as autograd does.
    critic_grads = []
    for loss in (fast, generic):
        out = loss.actor.sample(td, create_graph=True, critic_params=loss.qvalue_network_params)
        params = list(loss.critic_parameters())
        # The last layer's bias does not reach grad_a Q: its gradient is None on both paths.
        critic_grads.append(torch.autograd.grad(out.uK.pow(2).sum(), params, allow_unused=True))
    assert critic_grads[0][0].abs().sum() > 0
    for a, b in zip(*critic_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # Acting in float32, batched and unbatched, in both interaction modes.
    fast, generic = fast.float(), generic.float()
    for obs in (_obs(batch=80), TensorDict({"observation": torch.randn(OBS)}, batch_size=[])):
        for mode in (ExplorationType.RANDOM, ExplorationType.DETERMINISTIC):
            actions = []
            for loss in (fast, generic):
                torch.manual_seed(3)  # the same exploration noise
                with set_exploration_type(mode):
                    actions.append(loss.actor(obs.clone()))
            for key in ("action", ("flow", "uK")):
                torch.testing.assert_close(actions[0][key], actions[1][key], rtol=1e-5, atol=1e-6)


def test_non_relu_critic_falls_back_to_autograd(monkeypatch) -> None:
    from torchrl_mcmc.modules import _fast_paths

    closed_form_calls = []
    original = _fast_paths._BoundCritic.min_value_and_grad

    def counting(self, action):
        closed_form_calls.append(action.shape)
        return original(self, action)

    monkeypatch.setattr(_fast_paths._BoundCritic, "min_value_and_grad", counting)
    td = _obs(batch=16, dtype=torch.float64)
    relu = _actor(critic=_relu_critic(), num_layers=3).double()
    assert relu.has_fast_critic
    relu(td.clone())
    assert len(closed_form_calls) == 3  # one closed-form grad_a Q per layer

    class SubclassedValueOperator(ValueOperator):  # might override forward: not covered
        pass

    fallbacks = {
        "tanh": _relu_critic(activation=nn.Tanh),
        "subclass": SubclassedValueOperator(_relu_critic().module, ["observation", "action"]),
        "quadratic": ValueOperator(QuadraticCritic(OBS, ACT), ["observation", "action"]),
    }
    for name, critic in fallbacks.items():
        closed_form_calls.clear()
        actor = _actor(critic=critic, num_layers=3).double()
        _perturb(actor.flow, by=0.2)
        assert not actor.has_fast_critic, name
        # The written-out squash and distance terms, with grad_a Q from autograd, equal plain
        # autograd through the potential: the same end points (grad U) and the same
        # derivatives of the end points (second derivatives of U, what training needs).
        u0 = actor.sample(td).u0.detach().requires_grad_(True)
        prior_action = actor.sample(td).prior_action
        state = td["observation"]
        potential = actor.potential_fn(td, prior_action)
        grad_fn = actor.potential_grad_fn(td, prior_action, create_graph=True)
        by_hand = actor.flow(
            u0, potential, state=state, create_graph=True, potential_grad_fn=grad_fn
        ).position
        by_autograd = actor.flow(u0, potential, state=state, create_graph=True).position
        torch.testing.assert_close(by_hand, by_autograd, rtol=1e-10, atol=1e-12)
        first = [torch.autograd.grad(x.pow(2).sum(), u0)[0] for x in (by_hand, by_autograd)]
        torch.testing.assert_close(*first, rtol=1e-9, atol=1e-11)
        actor(td.clone())
        assert not closed_form_calls, name


# ---------------------------------------------------------------------------- divergence guard
@pytest.mark.parametrize("update_mode", ["alternating", "joint"])
def test_an_all_divergent_batch_gives_zero_losses_and_the_count_never_nan(update_mode) -> None:
    loss = _loss(update_mode=update_mode)
    with torch.no_grad():
        for layer in loss.actor.flow.layers:
            layer.net[-1].bias.fill_(float("inf"))  # an overflowed shift T: every end is inf
    batch = _batch(16)
    out = loss(batch)
    bad = [k for k, v in out.items() if not torch.isfinite(v).all()]
    assert not bad, {k: out[k] for k in bad}
    assert out["num_divergent"].item() == 16
    terms = ["loss_actor"] + (["loss_flow"] if update_mode == "alternating" else [])
    for key in terms:
        assert out[key].item() == 0.0 and out[key].requires_grad
    # No flow was kept, so none measured the flow's diagnostics: left out, never NaN or 0.
    assert not {"critic_gain", "policy_distance"} & set(out.keys())
    reached = {"loss_actor": list(loss.policy_parameters()), "loss_flow": []}
    reached["loss_flow" if update_mode == "alternating" else "loss_actor"] += list(
        loss.flow_parameters()
    )
    for key in terms:
        loss.zero_grad(set_to_none=True)
        out[key].backward(retain_graph=True)
        assert all(p.grad is not None and not p.grad.any() for p in reached[key]), key


def test_a_saturating_flow_is_not_divergent_its_objective_stays_bounded() -> None:
    # A tiny beta makes one layer's step eps^2 / 2 * grad Q / beta leap far past the squash's
    # saturation (|u| > 9 in float32): the action sits at the box's edge. Unlike the HMC chain,
    # the flow's objective has no density term to overflow: J = Q(s, aK) - beta * ||aK - a_t||
    # stays within the critic's values on the box, so this is not a divergence.
    loss = _loss()
    loss.beta = 1e-6
    batch = _batch(64)
    out = loss(batch)
    sample = loss.actor.sample(batch, critic_params=loss.qvalue_network_params.detach())
    assert sample.uK.abs().max() > 20.0 and out["num_divergent"].item() == 0
    q = loss._qvalues(batch, sample.action, loss.qvalue_network_params).min(0).values
    assert out["loss_actor"].abs() <= q.abs().max() + 1e-3
    out["loss_actor"].backward()
    assert all(p.grad.isfinite().all() for p in loss.policy_parameters())


def test_a_policy_network_of_another_dimension_fails_at_the_first_call_naming_both() -> None:
    spec = Bounded(-1.0, 1.0, shape=(ACT,))
    policy = TensorDictSequential(  # the network's output is wider than the TanhModule's box
        TensorDictModule(MLP(in_features=OBS, out_features=ACT + 1), ["observation"], ["param"]),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=spec),
    )
    actor = LangevinFlowActor(policy, make_critic(OBS, ACT), state_dim=OBS)
    with pytest.raises(
        ValueError, match=rf"TanhModule has dimension {ACT + 1}, but the action spec's is {ACT}"
    ):
        actor(_obs())


def test_settings_a_prebuilt_flow_overrides_are_reported() -> None:
    flow = LangevinFlow(ACT, num_layers=2, state_dim=OBS)
    with pytest.warns(UserWarning, match=r"num_layers=3, state_dim=4 ignored: the prebuilt flow"):
        actor = LangevinFlowActor(
            make_td3_policy(OBS, ACT), make_critic(OBS, ACT), flow=flow, num_layers=3, state_dim=OBS
        )
    assert actor.flow is flow and actor.flow.num_layers == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LangevinFlowActor(make_td3_policy(OBS, ACT), make_critic(OBS, ACT), flow=flow)
