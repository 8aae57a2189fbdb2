"""The learnable part of the HMC transform: step sizes and gated gradients (paper §3.2, §4.2).

:class:`HamiltonianFlow` holds the HMC parameters ``h`` of the paper (per-dimension step sizes and
the gate networks of eqs. 18–19) and runs ``K`` leapfrog steps with them through the functional
integrator of :mod:`torchrl_mcmc.mcmc.integrators`. The map ``(u0, rho0) -> (uK, rhoK)`` is
volume preserving for every value of ``h``, so ``log q_K(uK, rhoK) = log q_0(u0, rho0)`` exactly
(eq. 16): no log-determinant is ever computed.

The chain is guarded against divergence, defined by its energy error (docs/method.md §1.1): see
:class:`HamiltonianFlow`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from torchrl_mcmc.mcmc.integrators import (
    ForceFn,
    init_state,
    integrate,
    potential_grad,
)
from torchrl_mcmc.mcmc.nets import run_tanh_mlp, tanh_mlp
from torchrl_mcmc.mcmc.settings import (
    SavedSettings,
    check_integer,
    check_positive_float,
)

__all__ = ["DIVERGENCE_THRESHOLD", "FlowOutput", "GradientGate", "HamiltonianFlow"]

#: The energy error ``H(uK, rhoK) - H(u0, rho0)``, in nats, past which a chain counts as
#: divergent. Stan, NumPyro and BlackJAX flag a divergent transition at the same 1000 nats.
DIVERGENCE_THRESHOLD = 1000.0


class GradientGate(nn.Module):
    """Gated gradient of eqs. 18–19: ``G = sigma_h * g + (1 - sigma_h) * T_h``.

    ``sigma_h`` is a scalar in ``(0, 1)`` (sigmoid), ``T_h`` a vector in ``(-1, 1)^d`` (tanh),
    both small MLPs of ``(g, u[, s])``. ``G`` never reads the momentum, so each leapfrog
    sub-step stays a shear and the chain stays volume preserving.

    Two choices the paper leaves open, made here:

    * the gradient enters the nets through a soft-sign, ``g / (1 + |g|)``: ``g`` scales with
      ``Q / beta`` and can be large, which would saturate a 16-unit net; the explicit ``g`` term
      of ``G`` is left untouched;
    * at initialisation ``sigma_h ≈ 0.95`` and ``T_h = 0`` (zero last layer), so the chain starts
      as plain leapfrog and the gates learn to depart from it.

    Args:
        action_dim: ``d``.
        hidden: hidden width of both nets (paper: 8 or 16).
        state_dim: width of the optional state input; ``0`` ignores the state.

    Examples:
        >>> gate = GradientGate(action_dim=3)
        >>> g, u = torch.randn(5, 3), torch.randn(5, 3)
        >>> gate(g, u).shape
        torch.Size([5, 3])
    """

    def __init__(self, action_dim: int, hidden: int = 16, state_dim: int = 0) -> None:
        super().__init__()
        action_dim = check_integer("action_dim", action_dim, 1)
        hidden = check_integer("gate_hidden", hidden, 1)
        state_dim = check_integer("state_dim", state_dim, 0)
        in_features = 2 * action_dim + state_dim
        self.hidden = hidden
        self.state_dim = state_dim
        self.sigma_net = tanh_mlp(in_features, hidden, 1)
        self.shift_net = tanh_mlp(in_features, hidden, action_dim)
        with torch.no_grad():
            self.sigma_net[-1].bias.fill_(3.0)
            self.shift_net[-1].weight.zero_()
            self.shift_net[-1].bias.zero_()

    def forward(self, grad: Tensor, position: Tensor, state: Tensor | None = None) -> Tensor:
        inputs = [grad / (1.0 + grad.abs()), position]
        if self.state_dim:
            if state is None:
                raise ValueError("this gate was built with state_dim > 0 but got no state.")
            inputs.append(state)
        features = torch.cat(inputs, dim=-1)
        sigma = torch.sigmoid(run_tanh_mlp(self.sigma_net, features))
        shift = torch.tanh(run_tanh_mlp(self.shift_net, features))
        return sigma * grad + (1.0 - sigma) * shift


class FlowOutput(NamedTuple):
    """End point of a chain, after the divergence guard.

    Attributes:
        position: ``uK`` (``u0`` where the chain diverged).
        momentum: ``rhoK`` (``rho0`` where the chain diverged).
        divergent: boolean ``[*batch]``, ``True`` where the chain diverged: its end is not
            finite, or its energy error is not finite or above the flow's
            ``divergence_threshold``.
        energy_error: ``[*batch]``, the raw chain's ``H(uK, rhoK) - H(u0, rho0)`` with
            ``H(u, rho) = U(u) + rho . rho / 2`` (no graph; zeros when ``K = 0``; ``None`` with
            ``divergence_threshold=math.inf``, which skips it).
    """

    position: Tensor
    momentum: Tensor
    divergent: Tensor
    energy_error: Tensor | None


class HamiltonianFlow(SavedSettings, nn.Module):
    """``K`` leapfrog steps with learnable per-dimension step sizes and optional gates.

    Step sizes are stored as ``log eps`` so they stay positive under any optimiser step. They are
    shared by the ``K`` steps (the paper's ``eps in R^d``).

    Divergence guard: a chain diverges where its end is not finite, or where its energy
    error ``H(uK, rhoK) - H(u0, rho0)``, with ``H(u, rho) = U(u) + rho . rho / 2``, is not finite
    or exceeds ``divergence_threshold``. Such a sample falls back to its start ``(u0, rho0)``,
    which is still an exact draw from ``q_0`` (the identity is volume preserving too), and
    ``divergent`` flags it. Nothing silently turns into NaN. A non-finite force at any step (a
    NaN or infinite gradient, or a gradient function that marks a non-finite potential value
    with NaN, as :func:`~torchrl_mcmc.mcmc.potential_grad` and the actors' closed forms do)
    leaves a non-finite momentum or position behind, so it is divergent too.

    Why the energy error: ``exp(-H)`` is the target density of ``(u, rho)``, so the energy error
    is exactly how many nats the chain's end is worse than its start, which is minus the
    sample's gain in ELBO (eq. 15) over not moving (the fallback). A leapfrog step that is too
    long for the potential's curvature (``Q / beta`` with a small ``beta`` or a huge critic) sends
    the chain far out; past ``|u| ~ 9`` (float32; 19 in float64) the squash saturates, the
    critic's force vanishes, and the chain swings on in the prior's potential with a momentum
    and a prior term that are finite but huge: the density terms of the loss overflow later.
    The energy error catches that at its cause, in every dtype, whatever the gates do; a bound
    on ``|u|`` would not (a policy may place ``u0`` itself out there, and the estimate is exact
    there as long as the energy stays in range).

    The settings that shape the chain (``action_dim``, ``num_steps``, ``gated``, the gates'
    ``gate_hidden`` and ``state_dim``) are saved in the state dict, and a state saved with
    others is refused (:class:`~torchrl_mcmc.mcmc.settings.SavedSettings`).

    Args:
        action_dim: ``d``.

    Keyword Args:
        num_steps: ``K >= 0``; ``K = 0`` is the base policy.
        step_size: initial ``eps`` (all dimensions), ``> 0`` and a normal, finite number in the
            default dtype (``float32``: from ``1.18e-38`` to ``3.4e38``), stored as ``log eps``.
        gated: use :class:`GradientGate` (eqs. 18–19); ``False`` is plain leapfrog (eq. 13).
        gate_hidden: gate width (``>= 1``).
        state_dim: state features the gates read; ``0`` ignores the state.
        divergence_threshold: the energy error, in nats, past which a chain is divergent
            (``> 0``; default :data:`DIVERGENCE_THRESHOLD`). The check costs two evaluations
            of ``U`` per chain; ``math.inf`` skips it and flags non-finite chains only.

    Examples:
        >>> flow = HamiltonianFlow(2, num_steps=3, step_size=0.1, gated=False)
        >>> u0, rho0 = torch.zeros(4, 2), torch.ones(4, 2)
        >>> out = flow(u0, rho0, lambda u: 0.5 * (u**2).sum(-1))
        >>> out.position.shape, bool(out.divergent.any())
        (torch.Size([4, 2]), False)

        A step far too long for the potential's curvature: the chain stays finite but its
        energy grows by orders of magnitude, so it falls back to its start.

        >>> stiff = lambda u: 1e4 * (u**2).sum(-1)
        >>> out = flow(u0, rho0, stiff)
        >>> out.energy_error.isfinite().all().item(), out.divergent.all().item()
        (True, True)
        >>> bool((out.energy_error > 1e6).all())
        True
        >>> torch.equal(out.position, u0)
        True
    """

    def __init__(
        self,
        action_dim: int,
        *,
        num_steps: int = 5,
        step_size: float = 0.05,
        gated: bool = True,
        gate_hidden: int = 16,
        state_dim: int = 0,
        divergence_threshold: float = DIVERGENCE_THRESHOLD,
    ) -> None:
        super().__init__()
        action_dim = check_integer("action_dim", action_dim, 1)
        num_steps = check_integer("num_steps", num_steps, 0)
        # Stored as log eps: exp(log eps) must be a positive, finite float32 (1e-50 is 0 there).
        step_size = check_positive_float("step_size", step_size)
        if not isinstance(gated, bool):
            raise ValueError(f"gated must be a bool, got gated={gated!r}.")
        if isinstance(divergence_threshold, bool) or not divergence_threshold > 0:
            raise ValueError(
                "divergence_threshold must be > 0, got "
                f"divergence_threshold={divergence_threshold!r}."
            )
        self.action_dim = action_dim
        self.divergence_threshold = float(divergence_threshold)
        self.num_steps = num_steps
        self.log_step_size = nn.Parameter(torch.full((action_dim,), math.log(step_size)))
        self.gate = GradientGate(action_dim, gate_hidden, state_dim) if gated else None

    def settings(self) -> dict[str, int | bool | None]:
        """``action_dim``, ``num_steps``, ``gated`` and the gates' ``gate_hidden`` and
        ``state_dim`` (``None`` without gates): saved in the state dict, checked on load."""
        gate = self.gate
        return {
            "action_dim": self.action_dim,
            "num_steps": self.num_steps,
            "gated": gate is not None,
            "gate_hidden": None if gate is None else gate.hidden,
            "state_dim": None if gate is None else gate.state_dim,
        }

    @property
    def step_size(self) -> Tensor:
        """The current ``eps`` (positive, per dimension)."""
        return self.log_step_size.exp()

    def force_fn(
        self,
        potential_fn: Callable[[Tensor], Tensor],
        *,
        state: Tensor | None = None,
        create_graph: bool = False,
        potential_grad_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> ForceFn:
        """The integrator's force: the (gated) gradient of ``potential_fn``.

        ``potential_grad_fn``, when given, computes that gradient instead of autograd (see
        :meth:`forward`).
        """

        def force(position: Tensor) -> Tensor:
            if potential_grad_fn is None:
                grad = potential_grad(potential_fn, position, create_graph=create_graph)
            else:
                grad = potential_grad_fn(position)
            if self.gate is None:
                return grad
            return self.gate(grad, position, state)

        return force

    def forward(
        self,
        position: Tensor,
        momentum: Tensor,
        potential_fn: Callable[[Tensor], Tensor],
        *,
        state: Tensor | None = None,
        create_graph: bool = False,
        potential_grad_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> FlowOutput:
        """Runs the chain from ``(position, momentum)``.

        Args:
            position: ``u0``, ``[*batch, d]``.
            momentum: ``rho0``, ``[*batch, d]``.
            potential_fn: ``U``, maps ``[*batch, d]`` to ``[*batch]``; minimised by the dynamics.

        Keyword Args:
            state: ``[*batch, state_dim]`` features for gates built with ``state_dim > 0``.
            create_graph: differentiate through the chain (training); ``False`` when acting.
            potential_grad_fn: ``grad_u U`` computed by the caller (e.g. with the parts of ``U``
                whose gradient is known in closed form written out), used instead of
                autograd through ``potential_fn``. It must return the same gradient and honour
                ``create_graph`` itself: a graph to ``position`` and the parameters when
                ``True``, none when ``False``.

        Examples:
            >>> flow = HamiltonianFlow(2, num_steps=3, step_size=0.1, gated=False)
            >>> u0, rho0 = torch.zeros(4, 2), torch.ones(4, 2)
            >>> potential = lambda u: 0.5 * (u**2).sum(-1)
            >>> by_autograd = flow(u0, rho0, potential)
            >>> by_hand = flow(u0, rho0, potential, potential_grad_fn=lambda u: u)
            >>> torch.testing.assert_close(by_hand.position, by_autograd.position)
        """
        force = self.force_fn(
            potential_fn,
            state=state,
            create_graph=create_graph,
            potential_grad_fn=potential_grad_fn,
        )
        if self.num_steps == 0:
            # The base policy: no gradient is needed, so none is computed.
            never = torch.zeros(position.shape[:-1], dtype=torch.bool, device=position.device)
            return FlowOutput(position, momentum, never, torch.zeros_like(position).sum(-1))
        final = integrate(
            init_state(position, momentum, force), self.step_size, self.num_steps, force
        )
        ok = final.position.isfinite().all(-1) & final.momentum.isfinite().all(-1)
        energy_error = None
        if math.isfinite(self.divergence_threshold):
            with torch.no_grad():  # a flag: it must not enter the graph
                energy_error = _energy(potential_fn, final.position, final.momentum) - _energy(
                    potential_fn, position, momentum
                )
            # -inf (a potential of -inf at the end, +inf at the start) is no gain, and NaN
            # compares false: both are divergent.
            ok = ok & energy_error.isfinite() & (energy_error <= self.divergence_threshold)
        keep = ok.unsqueeze(-1)
        return FlowOutput(
            position=torch.where(keep, final.position, position),
            momentum=torch.where(keep, final.momentum, momentum),
            divergent=~ok,
            energy_error=energy_error,
        )


def _energy(potential_fn: Callable[[Tensor], Tensor], position: Tensor, momentum: Tensor) -> Tensor:
    """``H(u, rho) = U(u) + rho . rho / 2``, shape ``[*batch]``: ``exp(-H)`` is the chain's
    target density up to a constant."""
    return potential_fn(position.detach()) + 0.5 * momentum.detach().pow(2).sum(-1)
