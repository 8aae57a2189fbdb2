"""Diagonal Gaussians in the unsquashed action space, and the squashing bijection.

The chains run in the unsquashed space ``u`` and only the end point is squashed into the action
box. KL divergence is invariant under a bijection, so an ELBO written with Gaussians in ``u``
equals the ELBO in action space: with a Gaussian prior no tanh log-determinant appears. A
prior that is uniform over the action box (SAC's maximum-entropy objective) is, in ``u``, the
squash's log-determinant (:func:`squash_log_det`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["normal_log_prob", "squash", "squash_log_det", "standard_normal_log_prob", "unsquash"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


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


def squash_log_det(value: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``log |det d squash(u) / du|``, summed over the last dimension.

    ``sum_i log((high_i - low_i) / 2 * (1 - tanh(u_i)^2))``, with ``log(1 - tanh(u)^2)`` written
    as ``2 (log 2 - u - softplus(-2u))`` so that it stays finite where ``tanh(u)`` rounds to 1.
    Its gradient is ``-2 tanh(u)``.

    Examples:
        >>> squash_log_det(torch.zeros(2), torch.tensor(-1.0), torch.tensor(1.0))
        tensor(0.)
        >>> bool(squash_log_det(torch.tensor([30.0]), torch.tensor(-1.0), torch.tensor(1.0)) > -60)
        True
    """
    log_one_minus_tanh2 = 2.0 * (_LOG_2 - value - torch.nn.functional.softplus(-2.0 * value))
    return (torch.log(0.5 * (high - low)) + log_one_minus_tanh2).sum(-1)


def unsquash(action: Tensor, low: Tensor, high: Tensor, eps: float = 1e-6) -> Tensor:
    """Inverse of :func:`squash`, clipped ``eps`` inside the box so that it stays finite."""
    unit = (2.0 * (action - low) / (high - low) - 1.0).clamp(-1.0 + eps, 1.0 - eps)
    return torch.atanh(unit)
