"""Diagonal Gaussians in the unsquashed action space, and the squashing bijection.

The chains run in the unsquashed space ``u`` and only the end point is squashed into the action
box. KL divergence is invariant under a bijection, so an ELBO written with Gaussians in ``u``
equals the ELBO in action space: no tanh log-determinant appears anywhere (DESIGN §1.1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["normal_log_prob", "squash", "standard_normal_log_prob", "unsquash"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def normal_log_prob(value: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """``log N(value; loc, diag(scale^2))`` summed over the last dimension.

    Examples:
        >>> normal_log_prob(torch.zeros(2), torch.zeros(2), torch.ones(2))
        tensor(-1.8379)
    """
    z = (value - loc) / scale
    return (-0.5 * z.pow(2) - scale.log() - _LOG_SQRT_2PI).sum(-1)


def standard_normal_log_prob(value: Tensor) -> Tensor:
    """``log N(value; 0, I)`` summed over the last dimension (the momentum density)."""
    return (-0.5 * value.pow(2) - _LOG_SQRT_2PI).sum(-1)


def squash(value: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Maps ``R^d`` onto the open box ``(low, high)``: ``low + (high - low) * (tanh(u) + 1) / 2``.

    Examples:
        >>> squash(torch.tensor([0.0, 100.0]), torch.tensor(-2.0), torch.tensor(2.0))
        tensor([0., 2.])
    """
    return low + (high - low) * (torch.tanh(value) + 1.0) * 0.5


def unsquash(action: Tensor, low: Tensor, high: Tensor, eps: float = 1e-6) -> Tensor:
    """Inverse of :func:`squash`, clipped ``eps`` inside the box so that it stays finite."""
    unit = (2.0 * (action - low) / (high - low) - 1.0).clamp(-1.0 + eps, 1.0 - eps)
    return torch.atanh(unit)
