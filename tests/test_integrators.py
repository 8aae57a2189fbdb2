"""The leapfrog core and the learnable Hamiltonian flow: known answers, in float64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from torchrl_mcmc.mcmc import (
    HamiltonianFlow,
    init_state,
    integrate,
    leapfrog_step,
    potential_grad,
)

DTYPE = torch.float64


def _nonquadratic_potential(dim: int):
    """A smooth, non-quadratic, coupled potential (so no Jacobian is trivially 1)."""
    gen = torch.Generator().manual_seed(dim)
    a = torch.randn(dim, dim, generator=gen, dtype=DTYPE)
    precision = a @ a.T / dim + torch.eye(dim, dtype=DTYPE)

    def potential(u: torch.Tensor) -> torch.Tensor:
        quad = 0.5 * ((u @ precision) * u).sum(-1)
        return quad + torch.cos(2.0 * u).sum(-1) + 0.1 * (u**4).sum(-1)

    return potential


def _randomise_gate(flow: HamiltonianFlow) -> None:
    # The gate's shift net starts at zero; give it real weights so the gated path is exercised.
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in flow.gate.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _flow_map(flow: HamiltonianFlow, potential, dim: int):
    def fn(z: torch.Tensor) -> torch.Tensor:
        out = flow(z[:dim], z[dim:], potential, create_graph=True)
        return torch.cat([out.position, out.momentum])

    return fn


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("dim", [1, 3, 6, 8])
def test_k_step_map_preserves_volume(dim: int, gated: bool) -> None:
    flow = HamiltonianFlow(dim, num_steps=5, step_size=0.3, gated=gated).to(DTYPE)
    if gated:
        _randomise_gate(flow)
    potential = _nonquadratic_potential(dim)
    z0 = torch.randn(2 * dim, dtype=DTYPE)
    jac = jacobian(_flow_map(flow, potential, dim), z0)
    # Not the identity: the map really moves things and mixes coordinates.
    assert (jac - torch.eye(2 * dim, dtype=DTYPE)).abs().max() > 1e-2
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign.item() == 1.0
    assert abs(logabsdet.item()) < 1e-6


def test_gated_force_differs_from_plain_gradient() -> None:
    flow = HamiltonianFlow(3, gated=True).to(DTYPE)
    _randomise_gate(flow)
    potential = _nonquadratic_potential(3)
    u = torch.randn(4, 3, dtype=DTYPE)
    grad = potential_grad(potential, u, create_graph=False)
    plain = HamiltonianFlow(3, gated=False).to(DTYPE)
    torch.testing.assert_close(plain.force_fn(potential)(u), grad)
    assert (grad - flow.force_fn(potential)(u)).abs().max() > 1e-3


@pytest.mark.parametrize("dim", [1, 3, 8])
def test_plain_leapfrog_is_reversible(dim: int) -> None:
    potential = _nonquadratic_potential(dim)

    def force(q):
        return potential_grad(potential, q, create_graph=False)

    step = torch.full((dim,), 0.1, dtype=DTYPE)
    q0, p0 = torch.randn(5, dim, dtype=DTYPE), torch.randn(5, dim, dtype=DTYPE)
    forward = integrate(init_state(q0, p0, force), step, 20, force)
    assert (forward.position - q0).abs().max() > 1e-2
    back = integrate(init_state(forward.position, -forward.momentum, force), step, 20, force)
    torch.testing.assert_close(back.position, q0, atol=1e-8, rtol=0)
    torch.testing.assert_close(-back.momentum, p0, atol=1e-8, rtol=0)


# A table of systems with known answers, as NumPyro's test_hmc_util does: the potential, the
# exact trajectory q(t), p(t) from the start (q, p) = (sin 1, cos 1) componentwise.
_SYSTEMS = {
    # U = q^2 / 2: q(t) = sin(1 + t), p(t) = cos(1 + t).
    "harmonic_1d": (
        torch.tensor([1.0], dtype=DTYPE),
        lambda t: (torch.tensor([math.sin(1 + t)]), torch.tensor([math.cos(1 + t)])),
    ),
    # U = sum w_i^2 q_i^2 / 2 with w = (1, 2): q_i(t) = sin(1 + w_i t) / w_i ... started from
    # (sin 1 / w_i, cos 1), p_i(t) = cos(1 + w_i t).
    "harmonic_2d": (
        torch.tensor([1.0, 2.0], dtype=DTYPE),
        lambda t: (
            torch.tensor([math.sin(1 + t), math.sin(1 + 2 * t) / 2]),
            torch.tensor([math.cos(1 + t), math.cos(1 + 2 * t)]),
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(_SYSTEMS))
def test_harmonic_oscillator_end_point_and_energy_drift(name: str) -> None:
    omega, exact = _SYSTEMS[name]
    q0, p0 = (t.to(DTYPE) for t in exact(0.0))

    def force(q):
        return omega**2 * q

    def energy(state):
        return 0.5 * ((omega * state.position) ** 2 + state.momentum**2).sum().item()

    duration = 1.0
    drifts, errors = [], []
    for num_steps in (10, 20, 40):
        step = torch.tensor(duration / num_steps, dtype=DTYPE)
        state = init_state(q0, p0, force)
        e0, worst = energy(state), 0.0
        for _ in range(num_steps):
            state = leapfrog_step(state, step, force)
            worst = max(worst, abs(energy(state) - e0))
        drifts.append(worst)
        q_exact, p_exact = (t.to(DTYPE) for t in exact(duration))
        errors.append(
            max((state.position - q_exact).abs().max(), (state.momentum - p_exact).abs().max())
        )
    # Second order: halving the step divides energy drift and end-point error by ~4.
    for coarse, fine in itertools.pairwise(drifts):
        assert 3.5 < coarse / fine < 4.5
    for coarse, fine in itertools.pairwise(errors):
        assert 3.5 < coarse / fine < 4.5
    assert errors[-1] < 1e-3


def test_integrate_reuses_force_once_per_step() -> None:
    calls = 0

    def force(q):
        nonlocal calls
        calls += 1
        return q

    state = init_state(torch.zeros(2), torch.ones(2), force)
    integrate(state, torch.tensor(0.1), 7, force)
    assert calls == 1 + 7


def test_zero_steps_is_identity_and_costs_no_gradient() -> None:
    flow = HamiltonianFlow(3, num_steps=0)

    def potential(u):
        raise AssertionError("K = 0 must not evaluate the potential")

    u0, rho0 = torch.randn(4, 3), torch.randn(4, 3)
    out = flow(u0, rho0, potential)
    assert torch.equal(out.position, u0) and torch.equal(out.momentum, rho0)
    assert not out.divergent.any()


def test_divergent_samples_fall_back_to_start() -> None:
    flow = HamiltonianFlow(2, num_steps=3, step_size=0.1, gated=False)

    def potential(u):
        # Finite for the first sample, NaN gradient for the second one.
        return torch.where(u[..., :1] > 5.0, u.sqrt(), 0.5 * u**2).sum(-1)

    u0 = torch.tensor([[0.5, 0.5], [6.0, -1.0]])
    rho0 = torch.ones(2, 2)
    out = flow(u0, rho0, potential)
    assert out.divergent.tolist() == [False, True]
    assert torch.equal(out.position[1], u0[1]) and torch.equal(out.momentum[1], rho0[1])
    assert out.position.isfinite().all()
    assert not torch.equal(out.position[0], u0[0])


def test_energy_error_is_the_change_of_hamiltonian_by_hand() -> None:
    flow = HamiltonianFlow(2, num_steps=4, step_size=0.3, gated=False).to(DTYPE)
    potential = _nonquadratic_potential(2)
    u0, rho0 = torch.randn(6, 2, dtype=DTYPE), torch.randn(6, 2, dtype=DTYPE)
    out = flow(u0, rho0, potential)

    def energy(u, rho):
        return potential(u) + 0.5 * (rho**2).sum(-1)

    # A sound step: nothing flagged, so the end point is the chain's own, and a small error.
    assert not out.divergent.any()
    expected = energy(out.position, out.momentum) - energy(u0, rho0)
    torch.testing.assert_close(out.energy_error, expected)
    assert out.energy_error.abs().max() < 1.0


def test_a_chain_that_blows_up_but_stays_finite_is_divergent() -> None:
    # A step far too long for the potential's curvature (eps * omega = 0.05 * sqrt(2e6) = 71):
    # the leapfrog chain is unstable and grows by orders of magnitude per step, yet stays finite.
    flow = HamiltonianFlow(2, num_steps=5, step_size=0.05, gated=False).to(DTYPE)
    stiff = lambda u: 1e6 * (u**2).sum(-1)  # noqa: E731
    gentle = lambda u: 0.5 * (u**2).sum(-1)  # noqa: E731
    u0 = torch.tensor([[0.1, -0.2], [0.3, 0.0]], dtype=DTYPE)
    rho0 = torch.ones(2, 2, dtype=DTYPE)
    # Without the energy check (threshold inf) only non-finite chains count: the end point
    # is the raw chain's, finite but far out.
    unchecked = HamiltonianFlow(
        2, num_steps=5, step_size=0.05, gated=False, divergence_threshold=math.inf
    ).to(DTYPE)
    raw = unchecked(u0, rho0, stiff)
    assert not raw.divergent.any() and raw.energy_error is None
    assert raw.position.isfinite().all() and raw.position.abs().max() > 1e6
    out = flow(u0, rho0, stiff)
    assert (out.energy_error > 1e12).all()
    assert out.divergent.all()
    assert torch.equal(out.position, u0) and torch.equal(out.momentum, rho0)
    # The same chain on a potential it can follow is kept.
    assert not flow(u0, rho0, gentle).divergent.any()


def test_the_divergence_threshold_is_in_nats_of_energy_error() -> None:
    # One unit step on U = k u^2 / 2 from (u, rho) = (0, 1): rho -> 1 -> 1 - k / 2, u -> 1,
    # so dH = k / 2 + (1 - k / 2)^2 / 2 - 1 / 2 = k^2 / 8 exactly.
    flow = HamiltonianFlow(1, num_steps=1, step_size=1.0, gated=False).to(DTYPE)
    u0, rho0 = torch.zeros(1, 1, dtype=DTYPE), torch.ones(1, 1, dtype=DTYPE)
    for k, divergent in ((80.0, False), (100.0, True)):  # dH = 800 and 1250 nats
        out = flow(u0, rho0, lambda u, k=k: 0.5 * k * (u**2).sum(-1))
        torch.testing.assert_close(out.energy_error, torch.tensor([k**2 / 8], dtype=DTYPE))
        assert bool(out.divergent) is divergent
    flow.divergence_threshold = 2000.0
    assert not flow(u0, rho0, lambda u: 50.0 * (u**2).sum(-1)).divergent.any()
    with pytest.raises(ValueError, match="divergence_threshold=0"):
        HamiltonianFlow(1, divergence_threshold=0)


def test_step_sizes_are_positive_per_dimension_and_learnable() -> None:
    flow = HamiltonianFlow(4, num_steps=2, step_size=0.2)
    torch.testing.assert_close(flow.step_size, torch.full((4,), 0.2))
    with torch.no_grad():
        flow.log_step_size.sub_(100.0)  # any optimiser step keeps eps > 0
    assert (flow.step_size > 0).all()
    flow = HamiltonianFlow(4, num_steps=2, step_size=0.2)
    u0 = torch.randn(8, 4, requires_grad=True)
    out = flow(u0, torch.randn(8, 4), lambda u: (u**2).sum(-1), create_graph=True)
    out.position.sum().backward()
    assert flow.log_step_size.grad is not None and flow.log_step_size.grad.abs().sum() > 0
    assert all(p.grad is not None for p in flow.gate.parameters())
    assert u0.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_steps": -1}, "num_steps=-1"),
        ({"step_size": 0.0}, "step_size=0.0"),
        ({"step_size": -0.1}, "step_size=-0.1"),
        ({"step_size": float("nan")}, "step_size=nan"),
        ({"gate_hidden": 0}, "gate_hidden=0"),
    ],
)
def test_flow_rejects_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        HamiltonianFlow(3, **kwargs)
