"""The small networks inside the chains: the HMC gates' and the Langevin coupling layers' MLP.

Both are two tanh hidden layers (paper §5: "two layers with 16 neurons"), run without
``nn.Module`` call overhead (:func:`run_tanh_mlp`): they run ``K + 1`` times per chain on tiny
tensors, where each module call costs more than its arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["run_tanh_mlp", "tanh_mlp"]


def tanh_mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Two tanh hidden layers of width ``hidden`` and a linear output.

    Tanh keeps the force smooth, which matters because training differentiates through it a
    second time.

    Examples:
        >>> net = tanh_mlp(3, 16, 2)
        >>> net(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, out_features),
    )


def run_tanh_mlp(net: nn.Sequential, x: Tensor) -> Tensor:
    """``net(x)`` for a net built by :func:`tanh_mlp`, without ``nn.Module`` call overhead.

    Acting runs at batch 1, where each module call costs more than its arithmetic. Same
    layers, same parameters (read at call time, so ``to_module``/``functional_call`` swaps are
    seen); hooks on these internal layers are not run.

    Examples:
        >>> net = tanh_mlp(3, 16, 2)
        >>> x = torch.randn(5, 3)
        >>> torch.testing.assert_close(run_tanh_mlp(net, x), net(x))
    """
    for layer in net:
        x = torch.tanh(x) if isinstance(layer, nn.Tanh) else F.linear(x, layer.weight, layer.bias)
    return x
