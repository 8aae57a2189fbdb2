"""The amortisation gap closes on a target whose answer we know (docs/method.md §1.4, paper eq. 15).

Target: a Gaussian prior ``N(0, I)`` times ``exp(Q/beta)`` with a quadratic ``Q``, so the
posterior is a Gaussian with correlation 0.95 and ``log Z`` is known in closed form. The base
family is a diagonal Gaussian, which cannot represent the correlation: its best ELBO sits
``-0.5 log(1 - 0.95^2) ≈ 1.164`` nats below ``log Z`` (the mean-field gap). A trained chain on
top of it must recover part of that gap, with its exact density (eq. 16).
"""

from __future__ import annotations

import math

import pytest
import torch

from torchrl_mcmc.mcmc import HamiltonianFlow, normal_log_prob, standard_normal_log_prob

DTYPE = torch.float64
CORRELATION = 0.95
POSTERIOR_COV = 0.5 * torch.tensor([[1.0, CORRELATION], [CORRELATION, 1.0]], dtype=DTYPE)
PRECISION = torch.linalg.inv(POSTERIOR_COV)
CRITIC_CURVATURE = PRECISION - torch.eye(2, dtype=DTYPE)  # positive semi-definite here
CRITIC_OPTIMUM = torch.tensor([1.0, 0.5], dtype=DTYPE)
BETA = 1.0
MEAN_FIELD_GAP = -0.5 * math.log(1 - CORRELATION**2)


def critic(u: torch.Tensor) -> torch.Tensor:
    d = u - CRITIC_OPTIMUM
    return -0.5 * ((d @ CRITIC_CURVATURE) * d).sum(-1)


def log_target(u: torch.Tensor) -> torch.Tensor:
    zeros, ones = torch.zeros(2, dtype=DTYPE), torch.ones(2, dtype=DTYPE)
    return critic(u) / BETA + normal_log_prob(u, zeros, ones)


def log_normaliser() -> float:
    # log of the integral of exp(log_target): complete the square.
    a, c = CRITIC_CURVATURE / BETA, CRITIC_OPTIMUM
    mean = torch.linalg.solve(PRECISION, a @ c)
    log_peak = -0.5 * (c @ a @ c) + 0.5 * (mean @ PRECISION @ mean) - math.log(2 * math.pi)
    return float(log_peak + math.log(2 * math.pi) - 0.5 * torch.logdet(PRECISION))


def train_and_score(num_steps: int, gated: bool, iterations: int = 400) -> float:
    """Maximises the ELBO (eq. 15) over base loc/scale and the flow; returns a fresh estimate."""
    torch.manual_seed(1)
    loc = torch.zeros(2, dtype=DTYPE, requires_grad=True)
    log_scale = torch.zeros(2, dtype=DTYPE, requires_grad=True)
    flow = HamiltonianFlow(2, num_steps=num_steps, step_size=0.1, gated=gated).to(DTYPE)
    optim = torch.optim.Adam([loc, log_scale, *flow.parameters()], lr=2e-2)

    def elbo(n: int) -> torch.Tensor:
        u0 = loc + log_scale.exp() * torch.randn(n, 2, dtype=DTYPE)
        rho0 = torch.randn(n, 2, dtype=DTYPE)
        out = flow(u0, rho0, lambda u: -log_target(u), create_graph=True)
        log_joint = log_target(out.position) + standard_normal_log_prob(out.momentum)
        # Unit Jacobian: the density of (uK, rhoK) is the density of (u0, rho0).
        log_q = normal_log_prob(u0, loc, log_scale.exp()) + standard_normal_log_prob(rho0)
        return (log_joint - log_q).mean()

    for _ in range(iterations):
        optim.zero_grad()
        (-elbo(256)).backward()
        optim.step()
    torch.manual_seed(5)
    return elbo(20_000).item()


@pytest.fixture(scope="module")
def base_elbo() -> float:
    return train_and_score(num_steps=0, gated=False)


def test_base_family_sits_at_the_mean_field_gap(base_elbo: float) -> None:
    # Known answer: the best diagonal Gaussian misses log Z by exactly the mean-field gap.
    assert log_normaliser() - base_elbo == pytest.approx(MEAN_FIELD_GAP, abs=0.05)


@pytest.mark.parametrize(
    ("num_steps", "gated", "iterations", "min_gain"),
    # Measured: K=1 plain recovers ~0.17 nats after 400 iterations; K=5 gated ~1.04 of the
    # 1.15-nat gap after 1000 (plain leapfrog with one shared step size stalls near 0.09).
    [(1, False, 400, 0.1), (5, True, 1000, 0.7)],
)
def test_trained_chain_closes_the_gap(
    base_elbo: float, num_steps: int, gated: bool, iterations: int, min_gain: float
) -> None:
    elbo = train_and_score(num_steps=num_steps, gated=gated, iterations=iterations)
    assert elbo - base_elbo > min_gain
    # Still a bound: no estimate may exceed log Z (beyond Monte Carlo noise).
    assert elbo < log_normaliser() + 0.02
