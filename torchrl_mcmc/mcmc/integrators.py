"""Leapfrog integration as a small functional core.

The integrator knows nothing about TorchRL, critics or policies: it moves a ``(position,
momentum)`` pair under a *force* function and nothing else. Everything the method adds (the
critic's potential, gates, learnable step sizes) enters through that function and the step size
argument, so the same code serves acting (no autograd graph) and training (a graph through the
whole chain), and the same tests (volume preservation, reversibility, energy drift) cover both.

Conventions (paper eq. 13, docs/method.md §1.1): the potential ``U`` is to be *minimised*, the
force is ``G(q) = grad_q U(q)`` (or a gated version of it, eqs. 18–19), and one step is

.. code-block:: text

    p~ = p  - eps / 2 * G(q)
    q' = q  + eps * p~
    p' = p~ - eps / 2 * G(q')

Each line is a shear (it changes one of ``q``, ``p`` by a function of the other), so the step
has Jacobian determinant exactly 1 whatever ``G`` is, as long as ``G`` does not read ``p``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "ForceFn",
    "LeapfrogState",
    "init_state",
    "integrate",
    "leapfrog_step",
    "mark_non_finite",
    "potential_grad",
]


class LeapfrogState(NamedTuple):
    """The integrator's state.

    It carries the force it already computed at ``position`` (as BlackJAX carries
    ``logdensity_grad``), so a step evaluates the force once, at the new position, and the
    next step starts from it: ``K`` steps cost ``K + 1`` force evaluations, not ``2K``.

    Attributes:
        position: ``q``, shape ``[*batch, d]``.
        momentum: ``p``, shape ``[*batch, d]``.
        force: the vector ``G(q)`` the momentum update uses (``grad_q U(q)`` itself for plain
            leapfrog, the gated mix of eqs. 18–19 otherwise).
    """

    position: Tensor
    momentum: Tensor
    force: Tensor


#: ``force_fn(position) -> force``: ``G(q)``, which must not read the momentum.
ForceFn = Callable[[Tensor], Tensor]


def potential_grad(
    potential_fn: Callable[[Tensor], Tensor], position: Tensor, *, create_graph: bool
) -> Tensor:
    """``grad_q U(q)`` for a batch of independent positions, in any grad mode.

    Collectors call policies under :func:`torch.no_grad`; the chain still needs this gradient, so
    autograd is switched on locally. With ``create_graph=False`` the position is detached first
    and the result carries no graph (acting). With ``create_graph=True`` the result stays
    differentiable w.r.t. whatever produced ``position`` and w.r.t. the parameters inside
    ``potential_fn`` (training through the chain).

    Where the potential itself is not finite, the gradient is NaN, whatever autograd made of it
    (the gradient of a constant NaN or inf is 0): a position where ``U`` is undefined is no
    place to step from, and the chains' divergence guards flag what a NaN force leaves behind.

    Args:
        potential_fn: maps ``[*batch, d]`` positions to ``[*batch]`` potentials. Samples must be
            independent (the gradient of the sum is taken).
        position: where to evaluate the gradient.

    Keyword Args:
        create_graph: keep the graph of the gradient computation.

    Examples:
        >>> q = torch.tensor([[1.0, -2.0], [0.0, 5.0]])
        >>> potential_grad(lambda x: 0.5 * (x**2).sum(-1), q, create_graph=False)
        tensor([[ 1., -2.],
                [ 0.,  5.]])
        >>> far = lambda x: torch.where(x[:, 1] > 4, torch.inf, 0.5 * (x**2).sum(-1))
        >>> potential_grad(far, q, create_graph=False)
        tensor([[ 1., -2.],
                [nan, nan]])
    """
    with torch.enable_grad():
        if not create_graph or not position.requires_grad:
            position = position.detach().requires_grad_(True)
        potential = potential_fn(position)
        (grad,) = torch.autograd.grad(potential.sum(), position, create_graph=create_graph)
    return mark_non_finite(grad, potential)


def mark_non_finite(grad: Tensor, value: Tensor) -> Tensor:
    """``grad`` (``[*batch, d]``), NaN in the rows where ``value`` (``[*batch]``) is not finite.

    How a gradient function reports a potential (or a critic's value) it found NaN or infinite
    at a position: the chains stay free of data-dependent branches (they compile into one
    graph), and the NaN force makes that sample divergent.

    Examples:
        >>> mark_non_finite(torch.ones(3, 2), torch.tensor([0.0, torch.inf, torch.nan]))
        tensor([[1., 1.],
                [nan, nan],
                [nan, nan]])
    """
    return grad.where(value.isfinite().unsqueeze(-1), torch.nan)


def init_state(position: Tensor, momentum: Tensor, force_fn: ForceFn) -> LeapfrogState:
    """Builds the initial state, evaluating the force once at ``position``."""
    return LeapfrogState(position, momentum, force_fn(position))


def leapfrog_step(state: LeapfrogState, step_size: Tensor, force_fn: ForceFn) -> LeapfrogState:
    """One velocity-Verlet (leapfrog) step, eq. 13 / eqs. 18–19.

    Args:
        state: the current state; its ``force`` is reused, not recomputed.
        step_size: ``eps``, a scalar or a per-dimension tensor broadcastable to the position.
        force_fn: evaluated once, at the new position.
    """
    half = 0.5 * step_size
    momentum = state.momentum - half * state.force
    position = state.position + step_size * momentum
    force = force_fn(position)
    momentum = momentum - half * force
    return LeapfrogState(position, momentum, force)


def integrate(
    state: LeapfrogState, step_size: Tensor, num_steps: int, force_fn: ForceFn
) -> LeapfrogState:
    """``num_steps`` leapfrog steps from ``state`` (``num_steps = 0`` returns ``state``).

    Examples:
        >>> import math
        >>> force = lambda q: q  # harmonic oscillator, U = q^2 / 2: G(q) = grad U(q) = q
        >>> s0 = init_state(torch.tensor([math.sin(1.0)]), torch.tensor([math.cos(1.0)]), force)
        >>> s = integrate(s0, torch.tensor(0.01), 100, force)
        >>> energy = lambda s: 0.5 * (s.position**2 + s.momentum**2).item()
        >>> abs(energy(s) - energy(s0)) < 1e-4
        True
    """
    for _ in range(num_steps):
        state = leapfrog_step(state, step_size, force_fn)
    return state
