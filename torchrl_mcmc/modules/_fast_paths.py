"""Fast paths for the chains' hot loops, for the common TorchRL modules.

The HMC chain evaluates ``grad_a Q`` ``K + 1`` times per action and per training sample (the
Langevin flow ``K`` times), and at batch 1 (acting) TensorDict plumbing, ``torch.vmap`` and the
autograd engine cost several times the arithmetic. For the usual modules, a
``ProbabilisticActor(TensorDictModule(net))`` policy, a ``TensorDictSequential(TensorDictModule(
net), TanhModule)`` TD3 policy and a ``ValueOperator``/``TensorDictModule`` critic over a
torchrl ``MLP`` of ``Linear`` and ReLU/LeakyReLU layers, this module computes the same numbers
directly. Anything else is refused by the detectors and takes the actors' generic path, and
``tests/test_hmc_loss.py`` and ``tests/test_langevin.py`` check the two paths against each other
(losses, gradients, actions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    TensorDictModuleBase,
    TensorDictSequential,
)
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torch import distributions as D
from torchrl.modules import MLP, ValueOperator
from torchrl.modules.tensordict_module.probabilistic import SafeProbabilisticModule


def _plain_module(net: nn.Module) -> bool:
    """Whether ``net`` is a plain ``TensorDictModule``: ``net.module(*inputs)`` is all it does.

    Exact type (a subclass may override ``forward``), positional inputs, no method redirection,
    no hooks.
    """
    if type(net) is not TensorDictModule or isinstance(net.module, TensorDictModuleBase):
        return False
    if net._kwargs is not None or net.method is not None or net.method_kwargs:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in (net, net.module))


def plain_policy(policy: ProbabilisticTensorDictSequential) -> bool:
    """Whether :func:`policy_dist` may call the policy's network directly.

    True for the usual ``ProbabilisticActor(TensorDictModule(net, ...), ...)`` whose network
    writes every parameter its distribution reads: then ``get_dist`` amounts to ``net(*inputs)``
    and ``distribution_class(**params, **distribution_kwargs)``, and its TensorDict plumbing
    (a third of an action's cost at batch 1) can be skipped.
    """
    modules = list(policy.module)
    if policy.return_composite or len(modules) != 2:
        return False
    net, prob = modules
    if not _plain_module(net):
        return False
    if type(prob) not in (ProbabilisticTensorDictModule, SafeProbabilisticModule):
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in (policy, prob)):
        return False
    return all(key in net.out_keys for key in prob.in_keys)


def plain_deterministic_policy(policy: TensorDictSequential, base_key: NestedKey) -> bool:
    """Whether :func:`deterministic_policy_output` may call the policy's network directly.

    True for TorchRL's usual TD3 actor, ``TensorDictSequential(TensorDictModule(net, ...,
    out_keys=[base_key]), TanhModule(...))`` whose ``TanhModule`` writes another key than the
    one it reads: the pre-tanh output ``base_key`` is then ``net(*inputs)``, and the
    TensorDict plumbing around it (and the ``TanhModule``, whose output the flow does not use)
    can be skipped.
    """
    modules = list(policy.module)
    if type(policy) is not TensorDictSequential or len(modules) != 2:
        return False
    if policy._forward_hooks or policy._forward_pre_hooks:
        return False
    net, tanh = modules
    return _plain_module(net) and list(net.out_keys) == [base_key] and base_key not in tanh.out_keys


def deterministic_policy_output(
    policy: TensorDictSequential, tensordict: TensorDictBase, base_key: NestedKey, plain: bool
) -> Tensor:
    """The policy's ``base_key`` output on its inputs in ``tensordict``, which is left untouched."""
    if plain:
        net = policy.module[0]
        return net.module(*(tensordict.get(key) for key in net.in_keys))
    return policy(tensordict.select(*policy.in_keys).copy()).get(base_key)


def policy_dist(
    policy: ProbabilisticTensorDictSequential, tensordict: TensorDictBase, plain: bool
) -> D.Distribution:
    """``policy.get_dist`` on the policy's inputs in ``tensordict``, which is left untouched."""
    if plain:
        net, prob = policy.module
        outputs = net.module(*(tensordict.get(key) for key in net.in_keys))
        outputs = (outputs,) if isinstance(outputs, Tensor) else outputs
        if isinstance(outputs, tuple) and len(outputs) == len(net.out_keys):
            by_key = dict(zip(net.out_keys, outputs, strict=True))
            params = {
                dist_key[-1] if isinstance(dist_key, tuple) else dist_key: by_key[key]
                for dist_key, key in zip(prob.dist_keys, prob.in_keys, strict=True)
            }
            return prob.distribution_class(**params, **prob.distribution_kwargs)
    return policy.get_dist(tensordict.select(*policy.in_keys).copy())


# Activations under which a critic is piecewise linear in its input. Autograd differentiates
# their backward (``threshold_backward``, ``leaky_relu_backward``) to exact zeros w.r.t. the
# input, which is what makes the closed-form gradient of :class:`PiecewiseLinearCritic` exact
# in training too.
_PIECEWISE_LINEAR_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Identity)

# From this many states on (CPU), the chain's critic gradient runs only the picked critic's
# backward (see _BoundCritic._picked_grad_grouped); below it the extra small ops cost more.
_MIN_STATES_TO_GROUP = 64

# Below this variance across the critics, mean_minus_std treats them as agreeing (std = 0): the
# std's derivative (centred value / std) is undefined at 0, and is taken as 0 there.
_VAR_FLOOR = 1e-12


def mean_minus_std(values: Tensor, pessimism: float) -> Tensor:
    """``mean_i Q_i - pessimism * std_i Q_i`` over the critics (dim 0, population std).

    A lower confidence bound on the value from an ensemble of critics. With two critics the
    population std is ``|Q_1 - Q_2| / 2``, so ``pessimism = 1`` is exactly their minimum,
    ``0`` their mean, and ``> 1`` more pessimistic than the minimum.
    """
    return values.mean(dim=0) - pessimism * _spread(values)[0]


def _spread(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(std, centred values, where std > 0)`` over dim 0; ``std`` is exactly 0, with a zero
    gradient, where the critics agree (the square root's derivative is infinite there)."""
    centered = values - values.mean(dim=0)
    var = centered.pow(2).mean(dim=0)
    spread = var > _VAR_FLOOR
    std = torch.where(spread, var.where(spread, 1.0).sqrt(), 0.0)
    return std, centered, spread


_Linear = tuple[Tensor, Tensor | None]  # (weight.T [n, in, out], bias [n, 1, out] or None)


def _activation_backward(module: nn.Module, grad: Tensor, saved: Tensor | None) -> Tensor:
    """The backward of a piecewise-linear activation, the very op autograd would call.

    ``saved`` is what :func:`_activation_saved` kept from the forward. One fused op, and
    ``grad`` may broadcast against ``saved`` (the first backward step's ``grad`` is the same
    for every state).
    """
    if type(module) is nn.ReLU:
        return torch.ops.aten.threshold_backward(grad, saved, 0)
    if type(module) is nn.LeakyReLU:
        return torch.ops.aten.leaky_relu_backward(grad, saved, module.negative_slope, False)
    return grad  # nn.Identity


def _activation_saved(module: nn.Module, pre: Tensor, post: Tensor) -> Tensor | None:
    """What :func:`_activation_backward` needs: ReLU's output, LeakyReLU's input (as autograd)."""
    if type(module) is nn.ReLU:
        return post
    if type(module) is nn.LeakyReLU:
        return pre
    return None


class PiecewiseLinearCritic:
    """The fast path for the usual critic: a ``TensorDictModule`` over a ReLU ``MLP``.

    The generic evaluation of twin critics (``params.to_module`` under :func:`torch.vmap`, with
    TensorDict reads and writes around the module) costs about 5x its arithmetic at batch 1 and
    1.4x at batch 256 (256x256 critics), and a chain runs it ``K + 1`` times, each followed by
    an autograd pass for ``grad_a Q``. When the critic is a plain
    :class:`~tensordict.nn.TensorDictModule` (or :class:`~torchrl.modules.ValueOperator`) around
    a torchrl ``MLP`` of ``nn.Linear`` layers and ReLU/LeakyReLU activations with a scalar
    output:

    * the stacked parameters (``[n, out, in]``, as the loss holds them) run as one batched
      matmul per layer, which is what vmap lowers a ``Linear`` to, on the inputs the ``MLP``
      would concatenate, in the same order;
    * ``Q`` is piecewise linear in the action, so ``grad_a Q`` is a product of the weights and
      the activations' 0/1 (or slope) masks, computed in closed form with the backward ops
      autograd would run, without its engine, and for the critic the minimum picks at each
      state (what autograd's backward of ``min`` selects).

    Any other critic takes the generic path; :meth:`from_critic` returns ``None`` for it.
    """

    def __init__(self, critic: TensorDictModule) -> None:
        self.layers: list[tuple[str, nn.Module]] = list(critic.module.named_children())

    @classmethod
    def from_critic(cls, critic: TensorDictModuleBase) -> PiecewiseLinearCritic | None:
        # Exact types throughout: a subclass may override forward, and the fast path would then
        # compute a different function.
        if type(critic) not in (TensorDictModule, ValueOperator) or type(critic.module) is not MLP:
            return None
        if critic._kwargs is not None or critic.method is not None or critic.method_kwargs:
            return None
        mlp = critic.module
        children = list(mlp.children())
        if len(critic.out_keys) != 1 or mlp._reshape_out or not children:
            return None
        if any(type(m) not in (nn.Linear, *_PIECEWISE_LINEAR_ACTIVATIONS) for m in children):
            return None
        # A Linear first (its state columns are folded once per chain) and last, with one
        # output (a scalar Q, no activation on it).
        first, last = children[0], children[-1]
        if type(first) is not nn.Linear or type(last) is not nn.Linear or last.out_features != 1:
            return None
        if any(m._forward_hooks or m._forward_pre_hooks for m in (critic, mlp, *children)):
            return None
        return cls(critic)

    def weights(self, params: TensorDictBase | None, *, detach: bool) -> list[_Linear | nn.Module]:
        """Per layer: ``(weight.T [n, in, out], bias [n, 1, out] or None)``, or the activation.

        Args:
            params: the critic's parameters with a leading critic dimension, unbatched ones (one
                critic), or ``None`` for the module's own.

        Keyword Args:
            detach: drop the parameters' autograd history (acting needs ``grad_a Q`` only).
        """
        layers: list[_Linear | nn.Module] = []
        for name, module in self.layers:
            if type(module) is not nn.Linear:
                layers.append(module)
                continue
            if params is None:
                weight, bias = module.weight.unsqueeze(0), module.bias
                bias = None if bias is None else bias.unsqueeze(0)
            else:
                weight = params.get(("module", name, "weight"))
                bias = params.get(("module", name, "bias"), None)
                if params.ndim == 0:
                    weight = weight.unsqueeze(0)
                    bias = None if bias is None else bias.unsqueeze(0)
            if detach:
                weight = weight.detach()
                bias = None if bias is None else bias.detach()
            layers.append((weight.transpose(-1, -2), None if bias is None else bias.unsqueeze(-2)))
        return layers

    @staticmethod
    def _linear(hidden: Tensor, layer: _Linear) -> Tensor:
        # [1 or n, N, in] @ [n, in, out]: a batched matmul over the critics.
        weight_t, bias = layer
        if bias is None:
            return torch.matmul(hidden, weight_t)
        if hidden.shape[0] == weight_t.shape[0]:
            return torch.baddbmm(bias, hidden, weight_t)  # bias, matmul and sum in one op
        return torch.matmul(hidden, weight_t) + bias

    def __call__(self, inputs: Sequence[Tensor], layers: Sequence[_Linear | nn.Module]) -> Tensor:
        """``[n, *batch]``: every critic's value at the inputs (in the critic's ``in_keys``)."""
        x = inputs[0] if len(inputs) == 1 else torch.cat(list(inputs), -1)
        hidden = x.reshape(1, -1, x.shape[-1])
        for layer in layers:
            hidden = layer(hidden) if isinstance(layer, nn.Module) else self._linear(hidden, layer)
        return hidden.reshape(hidden.shape[0], *x.shape[:-1])

    def bind(
        self, inputs: Sequence[Tensor | None], layers: Sequence[_Linear | nn.Module]
    ) -> _BoundCritic:
        """The critics as functions of the one input given as ``None`` (the action)."""
        return _BoundCritic(inputs, layers)


class _BoundCritic:
    """A :class:`PiecewiseLinearCritic` at fixed states, set up once per chain.

    The fixed inputs' share of the first layer (``state @ W_state.T + b``) is computed here,
    once, rather than at every leapfrog step.
    """

    def __init__(
        self, inputs: Sequence[Tensor | None], layers: Sequence[_Linear | nn.Module]
    ) -> None:
        (weight_t, bias), *self.rest = layers
        width = weight_t.shape[-2] - sum(x.shape[-1] for x in inputs if x is not None)
        fixed, offset, rows = bias, 0, slice(0, 0)
        for x in inputs:
            if x is None:
                rows = slice(offset, offset + width)
                offset += width
                continue
            x = x.reshape(1, -1, x.shape[-1])
            share = torch.matmul(x, weight_t[:, offset : offset + x.shape[-1]])
            fixed = share if fixed is None else fixed + share
            offset += x.shape[-1]
        self.first_weight_t = weight_t[:, rows].contiguous()  # [n, width, hidden]
        # [n, N or 1, hidden], so that each step's first layer is one baddbmm.
        self.fixed = fixed if fixed is not None else weight_t.new_zeros(weight_t.shape[0], 1, 1)
        self.width = width

    def _forward(self, action: Tensor, keep: bool) -> tuple[Tensor, list[Tensor | None]]:
        weight_t = self.first_weight_t
        action = action.reshape(1, -1, self.width).expand(weight_t.shape[0], -1, -1)
        hidden = torch.baddbmm(self.fixed, action, weight_t)
        saved = []
        for layer in self.rest:
            if isinstance(layer, nn.Module):
                pre, hidden = hidden, layer(hidden)
                if keep:
                    saved.append(_activation_saved(layer, pre, hidden))
            else:
                hidden = PiecewiseLinearCritic._linear(hidden, layer)
        return hidden.squeeze(-1), saved

    def values(self, action: Tensor) -> Tensor:
        """``[n, *batch]``: every critic at ``action`` (differentiable)."""
        values, _ = self._forward(action, keep=False)
        return values.reshape(values.shape[0], *action.shape[:-1])

    def min_value_and_grad(self, action: Tensor) -> tuple[Tensor, Tensor]:
        """``min_i Q_i(s, action)`` and its gradient w.r.t. the action, in closed form.

        Only for inputs and parameters that need no graph: the result has none. The gradient is
        the picked critic's at each state, as autograd's backward of ``min`` routes it.
        """
        values, saved = self._forward(action, keep=True)
        best, index = values.min(dim=0)  # [N]
        batch = action.shape[:-1]
        if index.numel() >= _MIN_STATES_TO_GROUP and index.device.type == "cpu" and len(values) > 1:
            grad = self._picked_grad_grouped(saved, index)
        else:
            grad = self._every_grad(saved)
            grad = grad.expand(grad.shape[0], index.numel(), self.width)
            grad = grad.gather(0, index.view(1, -1, 1).expand(1, -1, self.width)).squeeze(0)
        return best.reshape(batch), grad.reshape(*batch, self.width)

    def mean_std_value_and_grad(self, action: Tensor, pessimism: float) -> tuple[Tensor, Tensor]:
        """:func:`mean_minus_std` of the critics and its gradient w.r.t. the action, in closed
        form (no graph, as :meth:`min_value_and_grad`).

        ``d(mean - k * std) / dQ_i = (1 - k * (Q_i - mean) / std) / n``: the gradient is every
        critic's gradient weighted by that (``1 / n`` each where the critics agree).
        """
        values, saved = self._forward(action, keep=True)
        std, centered, spread = _spread(values)
        ratio = torch.where(spread, centered / torch.where(spread, std, 1.0), 0.0)
        weights = (1.0 - pessimism * ratio) / values.shape[0]  # [n, N]
        grad = (weights.unsqueeze(-1) * self._every_grad(saved)).sum(dim=0)
        value = values.mean(dim=0) - pessimism * std
        batch = action.shape[:-1]
        return value.reshape(batch), grad.reshape(*batch, self.width)

    def _backward_weights(self) -> list[Tensor | nn.Module]:
        """The layers for the backward, last to first: ``[n, out, in]`` weights, activations."""
        layers = [
            layer if isinstance(layer, nn.Module) else layer[0].transpose(-1, -2)
            for layer in self.rest
        ]
        return [*reversed(layers), self.first_weight_t.transpose(-1, -2)]

    def _every_grad(self, saved: list[Tensor | None]) -> Tensor:
        """Every critic's gradient w.r.t. the action, ``[n, N, width]`` (``[n, 1, width]`` for a
        critic that is linear in it): one backward for all critics at once (batched matmuls),
        cheapest for few states, where the op count is what costs."""
        last, *layers = self._backward_weights()
        grad = last  # [n, 1, hidden]: d Q / d (last layer's input), the same at every state
        saved_iter = reversed(saved)
        for layer in layers:
            if isinstance(layer, nn.Module):
                grad = _activation_backward(layer, grad, next(saved_iter))
            else:
                grad = torch.matmul(grad, layer)
        return grad

    def _picked_grad_grouped(self, saved: list[Tensor | None], index: Tensor) -> Tensor:
        # Only the picked critic's backward: states grouped by the critic that won them, one
        # matmul per group. Half the backward arithmetic of the batched form for twin critics,
        # for a few more small ops and a host sync on the group sizes (hence CPU only).
        order = torch.argsort(index, stable=True)
        picked = index[order]
        # Row picked * N + order of the [n * N, hidden] activations: kept[picked, order] as one
        # index_select, which is ~3x cheaper on CPU than that advanced indexing.
        rows = picked * index.numel() + order
        sizes = torch.bincount(index, minlength=self.fixed.shape[0]).tolist()
        last, *layers = self._backward_weights()
        grad = last[picked, 0]  # [N, hidden]
        saved_iter = reversed(saved)
        for layer in layers:
            if isinstance(layer, nn.Module):
                kept = next(saved_iter)
                if kept is not None:
                    kept = kept.reshape(-1, kept.shape[-1]).index_select(0, rows)
                grad = _activation_backward(layer, grad, kept)
            else:
                grad = torch.cat(
                    [
                        torch.matmul(group, weight)
                        for group, weight in zip(grad.split(sizes), layer, strict=True)
                    ]
                )
        out = torch.empty_like(grad)
        out[order] = grad
        return out
