"""The Langevin flow of the deterministic method: coupling layers that ascend a potential.

Paper §3.1, eqs. 6–9; docs/method.md §1.2. Free of TorchRL: a layer moves a batch of points
``x`` (the unsquashed actions ``u``) with the gradient of a potential ``U`` it is handed and
small networks of the other half of ``x`` and an optional context (the state).

Conventions. ``U`` is an *objective*, to be maximised (eq. 6: ``U = Q / beta - ||a - pi_t(s)||``),
so the Langevin term climbs it. One coupling layer with binary mask ``m`` (``mbar = 1 - m``) is

.. code-block:: text

    y = m * x + mbar * [ (x + eps^2 / 2 * grad U(x) + eps * (exp(sigma) - 1)) * exp(S) + T ]

with ``sigma, S, T`` functions of ``(m * x, context)``. Two departures from the paper's eq. 9,
both deliberate:

* **The sign.** Eq. 9 prints ``- eps^2/2 grad U``, which descends an objective. With ``U`` the
  objective of eq. 6 the flow must ascend it (docs/method.md §1.2), hence ``+``.
* **exp(sigma) - 1 instead of exp(sigma).** Eq. 9's ``eps * exp(sigma(m x))`` stands where
  Langevin dynamics has its noise ``eps * xi``; a zero network would make it a constant shift by
  ``eps``, so the layer could not start as plain Langevin ascent. ``eps * (exp(sigma) - 1)``
  vanishes at ``sigma = 0`` and spans the same family of layers: the difference,
  ``eps * exp(S)``, is itself a function of ``(m * x, context)`` that ``T`` absorbs.

The networks' last layers start at zero, so ``sigma = S = T = 0`` and a fresh layer *is* one
explicit ascent step ``x + eps^2 / 2 * grad U(x)`` on its free half. ``S`` and ``sigma`` pass
through a soft clamp ``b * tanh(. / b)`` (slope 1 at 0, values in ``(-b, b)``): the chain is
differentiated through during training, and an unbounded ``exp`` is the usual way a flow overflows.

The layer is not a strict (triangular) coupling: ``grad U(x)`` reads the free half too, so it
has no cheap inverse or log-determinant. The deterministic method needs neither: the policy
gradient is the deterministic one (TD3/DDPG), no density of the flow's output is evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from torchrl_mcmc.mcmc.integrators import potential_grad
from torchrl_mcmc.mcmc.nets import run_tanh_mlp, tanh_mlp
from torchrl_mcmc.mcmc.settings import (
    SavedSettings,
    check_integer,
    check_number,
    check_positive_float,
)

__all__ = [
    "LangevinCoupling",
    "LangevinFlow",
    "LangevinFlowOutput",
    "alternating_masks",
    "smoothed_norm",
]


def smoothed_norm(value: Tensor, smoothing: float) -> Tensor:
    """``sqrt(||value||^2 + smoothing^2) - smoothing`` over the last dimension.

    The Euclidean norm has no gradient at 0, and the flow's regulariser ``||a - pi_t(s)||`` is
    evaluated exactly there: right after a prior refresh the flow starts at ``a0 = pi_t(s)``.
    This pseudo-Huber form is 0 at 0 with gradient 0, curvature ``1 / smoothing`` around 0, and
    ``||value|| - smoothing + O(smoothing^2 / ||value||)`` far from it.

    Examples:
        >>> smoothed_norm(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), 1e-3)
        tensor([4.9990, 0.0000])
    """
    return (value.pow(2).sum(-1) + smoothing**2).sqrt() - smoothing


def alternating_masks(action_dim: int, num_layers: int) -> Tensor:
    """``[num_layers, action_dim]`` boolean masks, ``True`` on the conditioning half.

    Layer ``k`` conditions on the coordinates ``i`` with ``(i + k)`` odd and moves the others,
    so consecutive layers swap halves (RealNVP). With ``action_dim = 1`` there is no half to
    condition on: every layer moves the single coordinate and its networks read the context only.

    Examples:
        >>> alternating_masks(3, 2)
        tensor([[False,  True, False],
                [ True, False,  True]])
        >>> alternating_masks(1, 2)
        tensor([[False],
                [False]])
    """
    if action_dim == 1:
        return torch.zeros(num_layers, 1, dtype=torch.bool)
    return (torch.arange(num_layers)[:, None] + torch.arange(action_dim)) % 2 == 1


def _soft_clamp(value: Tensor, bound: float) -> Tensor:
    return bound * torch.tanh(value / bound)


class LangevinCoupling(nn.Module):
    """One Langevin coupling layer (eq. 9, ascending; see the module docstring).

    ``sigma, S, T`` are the three output blocks of one small "meta" network (as zuko's coupling
    transforms have): two tanh hidden layers on ``(x[mask], context)``, a zero-initialised linear
    head with ``3 * (number of free coordinates)`` outputs. The step size ``eps`` is a scalar per
    layer (the paper's ``eps_k``), stored as ``log eps`` so it stays positive.

    Args:
        mask: boolean ``[action_dim]``, ``True`` on the coordinates the layer conditions on (and
            leaves unchanged). At least one coordinate must be free.

    Keyword Args:
        state_dim: width of the context the networks read besides ``x[mask]``; ``0`` for none.
        hidden: hidden width of the network (the paper's small nets: 8 or 16).
        step_size: initial ``eps > 0``, a normal, finite number in the default dtype
            (``float32``: from ``1.18e-38`` to ``3.4e38``), stored as ``log eps``.
        scale_bound: ``b > 0`` of the soft clamp on ``S`` and ``sigma``: one layer scales its
            free half by at most ``e^b``.

    Examples:
        >>> layer = LangevinCoupling(torch.tensor([False, True]), step_size=0.1)
        >>> x = torch.tensor([[1.0, 2.0]])
        >>> with torch.no_grad():  # acting: no graph, the gradient of U is still computed
        ...     layer(x, lambda x: -0.5 * (x**2).sum(-1))  # one ascent step on the free half
        tensor([[0.9950, 2.0000]])
    """

    def __init__(
        self,
        mask: Tensor,
        *,
        state_dim: int = 0,
        hidden: int = 16,
        step_size: float = 0.1,
        scale_bound: float = 1.0,
    ) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.ndim != 1 or bool(mask.all()):
            raise ValueError(
                f"mask must be a 1-d boolean tensor with at least one False, got {mask.tolist()}."
            )
        state_dim = check_integer("state_dim", state_dim, 0)
        hidden = check_integer("hidden", hidden, 1)
        # Stored as log eps: exp(log eps) must be a positive, finite float32 (1e-50 is 0 there).
        step_size = check_positive_float("step_size", step_size)
        scale_bound = check_number("scale_bound", scale_bound)
        in_features = int(mask.sum()) + state_dim
        if in_features == 0:
            raise ValueError(
                "the coupling networks would have no input: with action_dim = 1 the conditioning "
                "half is empty, so pass state_dim > 0 and the state as context."
            )
        num_free = int((~mask).sum())
        self.state_dim = state_dim
        self.scale_bound = scale_bound
        self.register_buffer("mask", mask)
        # The mask as index lists, computed once: nonzero() in forward would sync a GPU per layer.
        self.register_buffer("cond_index", mask.nonzero().squeeze(-1))
        self.register_buffer("free_index", (~mask).nonzero().squeeze(-1))
        self.log_step_size = nn.Parameter(torch.tensor(math.log(step_size)))
        # The HMC gates' small tanh MLP: smooth, as training differentiates through the flow.
        self.net = tanh_mlp(in_features, hidden, 3 * num_free)
        with torch.no_grad():
            # sigma = S = T = 0: a fresh layer is plain Langevin ascent on its free half.
            self.net[-1].weight.zero_()
            self.net[-1].bias.zero_()

    @property
    def step_size(self) -> Tensor:
        """The current ``eps`` (a positive scalar)."""
        return self.log_step_size.exp()

    def forward(
        self,
        x: Tensor,
        potential_fn: Callable[[Tensor], Tensor],
        *,
        state: Tensor | None = None,
        create_graph: bool = False,
        potential_grad_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Maps ``x`` (``[*batch, d]``) to ``y``; ``potential_fn`` is ``U``, maximised.

        Keyword Args:
            state: ``[*batch, state_dim]`` context, required when ``state_dim > 0``.
            create_graph: keep the graph of ``grad U`` (training through the flow).
            potential_grad_fn: ``grad U``, used instead of autograd through ``potential_fn``
                (see :meth:`LangevinFlow.forward`).
        """
        features = [x.index_select(-1, self.cond_index)]
        if self.state_dim:
            if state is None:
                raise ValueError("this layer was built with state_dim > 0 but got no state.")
            features.append(state)
        # run_tanh_mlp: the same layers without nn.Module call overhead (acting runs at batch 1).
        net_out = run_tanh_mlp(self.net, torch.cat(features, dim=-1))
        sigma, log_scale, shift = net_out.chunk(3, dim=-1)
        sigma = _soft_clamp(sigma, self.scale_bound)
        log_scale = _soft_clamp(log_scale, self.scale_bound)

        eps = self.step_size
        if potential_grad_fn is None:
            grad = potential_grad(potential_fn, x, create_graph=create_graph)
        else:
            grad = potential_grad_fn(x)
        free = x.index_select(-1, self.free_index)
        ascent = free + 0.5 * eps**2 * grad.index_select(-1, self.free_index)
        moved = (ascent + eps * torch.expm1(sigma)) * log_scale.exp() + shift
        return x.index_copy(-1, self.free_index, moved)


class LangevinFlowOutput(NamedTuple):
    """End point of the flow, after the divergence guard.

    Attributes:
        position: ``uK`` (``u0`` where the flow diverged).
        divergent: boolean ``[*batch]``, ``True`` where the flow produced a non-finite value.
    """

    position: Tensor
    divergent: Tensor


class LangevinFlow(SavedSettings, nn.Module):
    """``K`` Langevin coupling layers with alternating masks (eq. 8), the parameters ``h``.

    Divergence guard (as :class:`~torchrl_mcmc.mcmc.HamiltonianFlow`): where the end point is
    not finite, that sample falls back to its start ``u0`` (the base policy's action) and
    ``divergent`` flags it; nothing silently turns into NaN. A non-finite gradient in any layer
    (or a gradient function's NaN mark of a non-finite potential value, as
    :func:`~torchrl_mcmc.mcmc.potential_grad` and the actors' closed forms make it) stays in
    the coordinates it reached, so it is divergent too. The potential's value at the end point
    is not evaluated (the flow needs none).

    The settings that shape the flow (``action_dim``, ``num_layers``, ``hidden``,
    ``state_dim``, ``scale_bound``) are saved in the state dict, and a state saved with others
    is refused (:class:`~torchrl_mcmc.mcmc.settings.SavedSettings`).

    Args:
        action_dim: ``d >= 1``.

    Keyword Args:
        num_layers: ``K >= 0``; ``0`` is the base policy. The default 4 is even, so with
            alternating masks each half of the action is moved equally often (twice).
        step_size: initial ``eps`` of every layer.
        hidden: hidden width of each layer's network.
        state_dim: context width the networks read; must be ``> 0`` when ``action_dim = 1``.
        scale_bound: soft bound on ``S`` and ``sigma`` (see :class:`LangevinCoupling`).

    Examples:
        >>> flow = LangevinFlow(3, num_layers=2, step_size=0.1)
        >>> with torch.no_grad():
        ...     out = flow(torch.ones(4, 3), lambda u: -0.5 * (u**2).sum(-1))
        >>> out.position[0], bool(out.divergent.any())
        (tensor([0.9950, 0.9950, 0.9950]), False)
    """

    def __init__(
        self,
        action_dim: int,
        *,
        num_layers: int = 4,
        step_size: float = 0.1,
        hidden: int = 16,
        state_dim: int = 0,
        scale_bound: float = 1.0,
    ) -> None:
        super().__init__()
        action_dim = check_integer("action_dim", action_dim, 1)
        num_layers = check_integer("num_layers", num_layers, 0)
        self.action_dim = action_dim
        self.num_layers = num_layers
        self.state_dim = check_integer("state_dim", state_dim, 0)
        self.hidden = check_integer("hidden", hidden, 1)
        self.scale_bound = check_number("scale_bound", scale_bound)
        self.layers = nn.ModuleList(
            LangevinCoupling(
                mask,
                state_dim=state_dim,
                hidden=hidden,
                step_size=step_size,
                scale_bound=scale_bound,
            )
            for mask in alternating_masks(action_dim, num_layers)
        )

    def settings(self) -> dict[str, int | float]:
        """``action_dim``, ``num_layers``, ``hidden``, ``state_dim`` and ``scale_bound``: saved
        in the state dict, checked on load."""
        return {
            "action_dim": self.action_dim,
            "num_layers": self.num_layers,
            "hidden": self.hidden,
            "state_dim": self.state_dim,
            "scale_bound": self.scale_bound,
        }

    @property
    def step_size(self) -> Tensor:
        """``[K]``: every layer's ``eps`` (empty when ``K = 0``)."""
        if not self.layers:
            return torch.zeros(0)
        return torch.stack([layer.step_size for layer in self.layers])

    def forward(
        self,
        position: Tensor,
        potential_fn: Callable[[Tensor], Tensor],
        *,
        state: Tensor | None = None,
        create_graph: bool = False,
        potential_grad_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> LangevinFlowOutput:
        """Runs the ``K`` layers from ``position`` (``u0``, ``[*batch, d]``).

        Args:
            position: ``u0``, ``[*batch, d]``.
            potential_fn: ``U``, maps ``[*batch, d]`` to ``[*batch]``; ascended by the flow.

        Keyword Args:
            state: ``[*batch, state_dim]`` context for the layers' networks.
            create_graph: differentiate through the flow (training); ``False`` when acting.
            potential_grad_fn: ``grad U`` computed by the caller (e.g. with the parts of ``U``
                whose gradient is known in closed form written out), used instead of autograd
                through ``potential_fn``, as in :meth:`~torchrl_mcmc.mcmc.HamiltonianFlow.forward`.
                It must return the same gradient and honour ``create_graph`` itself: a graph to
                ``x`` and the parameters when ``True`` (wherever the derivative is not
                identically zero), none when ``False``.

        Examples:
            >>> flow = LangevinFlow(2, num_layers=3, step_size=0.3)
            >>> u0 = torch.randn(4, 2)
            >>> potential = lambda u: -0.5 * (u**2).sum(-1)
            >>> by_autograd = flow(u0, potential)
            >>> by_hand = flow(u0, potential, potential_grad_fn=lambda u: -u)
            >>> torch.testing.assert_close(by_hand.position, by_autograd.position)
        """
        x = position
        for layer in self.layers:
            x = layer(
                x,
                potential_fn,
                state=state,
                create_graph=create_graph,
                potential_grad_fn=potential_grad_fn,
            )
        finite = x.isfinite().all(-1)
        return LangevinFlowOutput(
            position=torch.where(finite.unsqueeze(-1), x, position), divergent=~finite
        )
