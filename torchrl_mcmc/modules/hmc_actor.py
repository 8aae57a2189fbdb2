"""``HMCActor``: a TorchRL stochastic actor whose action is refined by Hamiltonian dynamics.

Paper §3.2, §4.2, Algorithms 1–2; DESIGN §1.1.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from tensordict import TensorDictBase, TensorDictParams
from tensordict.nn import (
    InteractionType,
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    TensorDictModuleBase,
)
from tensordict.nn.probabilistic import interaction_type
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torch import distributions as D
from torchrl.data import Bounded, Composite, TensorSpec
from torchrl.modules import MLP, ValueOperator
from torchrl.modules.distributions import IndependentNormal, TanhNormal
from torchrl.modules.tensordict_module.probabilistic import SafeProbabilisticModule

from torchrl_mcmc.mcmc.gaussian import normal_log_prob, squash
from torchrl_mcmc.mcmc.hamiltonian import HamiltonianFlow

__all__ = ["HMCActor", "HMCSample"]

logger = logging.getLogger(__name__)

_GAUSSIAN_CLASSES = (TanhNormal, IndependentNormal, D.Normal)


class HMCSample(NamedTuple):
    """Everything one pass of the actor computes, with graphs kept when asked for.

    All ``u``/``rho`` tensors live in the unsquashed space, shape ``[*batch, d]``; densities and
    flags have shape ``[*batch]``.

    Attributes:
        action: ``squash(uK)``, inside the action spec's box.
        u0: the base sample (``loc`` in deterministic mode).
        rho0: the initial momentum (zeros in deterministic mode).
        uK: the chain's end point (``u0`` where it diverged).
        rhoK: the final momentum (``rho0`` where it diverged).
        log_prob: ``log pi_theta(u0 | s)``.
        loc: ``pi_theta``'s mean in the unsquashed space.
        scale: ``pi_theta``'s standard deviation in the unsquashed space.
        prior_loc: the frozen prior ``pi_theta_t``'s mean.
        prior_scale: the frozen prior's standard deviation.
        divergent: ``True`` where the chain produced a non-finite value and fell back to ``u0``.
    """

    action: Tensor
    u0: Tensor
    rho0: Tensor
    uK: Tensor
    rhoK: Tensor
    log_prob: Tensor
    loc: Tensor
    scale: Tensor
    prior_loc: Tensor
    prior_scale: Tensor
    divergent: Tensor


def _unique(keys: Sequence[NestedKey]) -> list[NestedKey]:
    out: list[NestedKey] = []
    for key in keys:
        if key not in out:
            out.append(key)
    return out


def _gaussian_params(dist: D.Distribution) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of a policy distribution in the unsquashed space."""
    base = dist.base_dist if isinstance(dist, TanhNormal) else dist
    return base.mean, base.stddev


def _probabilistic_module(
    policy: ProbabilisticTensorDictSequential,
) -> ProbabilisticTensorDictModule:
    found = [m for m in policy.modules() if isinstance(m, ProbabilisticTensorDictModule)]
    if not found:
        raise TypeError("policy has no ProbabilisticTensorDictModule: it cannot sample actions.")
    return found[-1]


def _plain_policy(policy: ProbabilisticTensorDictSequential) -> bool:
    """Whether :func:`_policy_dist` may call the policy's network directly.

    True for the usual ``ProbabilisticActor(TensorDictModule(net, ...), ...)`` whose network
    writes every parameter its distribution reads: then ``get_dist`` amounts to ``net(*inputs)``
    and ``distribution_class(**params, **distribution_kwargs)``, and its TensorDict plumbing
    (a third of an action's cost at batch 1) can be skipped.
    """
    modules = list(policy.module)
    if policy.return_composite or len(modules) != 2:
        return False
    net, prob = modules
    if type(net) is not TensorDictModule or isinstance(net.module, TensorDictModuleBase):
        return False
    if net._kwargs is not None or net.method is not None or net.method_kwargs:
        return False
    if type(prob) not in (ProbabilisticTensorDictModule, SafeProbabilisticModule):
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in (policy, net, net.module, prob)):
        return False
    return all(key in net.out_keys for key in prob.in_keys)


def _policy_dist(
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
# input, which is what makes the closed-form gradient of :class:`_PiecewiseLinearCritic` exact
# in training too.
_PIECEWISE_LINEAR_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Identity)

# From this many states on (CPU), the chain's critic gradient runs only the picked critic's
# backward (see _BoundCritic._picked_grad_grouped); below it the extra small ops cost more.
_MIN_STATES_TO_GROUP = 64

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


class _PiecewiseLinearCritic:
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
    def from_critic(cls, critic: TensorDictModuleBase) -> _PiecewiseLinearCritic | None:
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
    """A :class:`_PiecewiseLinearCritic` at fixed states, set up once per chain.

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
                hidden = _PiecewiseLinearCritic._linear(hidden, layer)
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
            grad = self._picked_grad_batched(saved, index)
        return best.reshape(batch), grad.reshape(*batch, self.width)

    def _backward_weights(self) -> list[Tensor | nn.Module]:
        """The layers for the backward, last to first: ``[n, out, in]`` weights, activations."""
        layers = [
            layer if isinstance(layer, nn.Module) else layer[0].transpose(-1, -2)
            for layer in self.rest
        ]
        return [*reversed(layers), self.first_weight_t.transpose(-1, -2)]

    def _picked_grad_batched(self, saved: list[Tensor | None], index: Tensor) -> Tensor:
        # Every critic's backward at once (batched matmuls), then the rows of the picked
        # critic. Cheapest for few states, where the op count is what costs.
        last, *layers = self._backward_weights()
        grad = last  # [n, 1, hidden]: d Q / d (last layer's input), the same at every state
        saved_iter = reversed(saved)
        for layer in layers:
            if isinstance(layer, nn.Module):
                grad = _activation_backward(layer, grad, next(saved_iter))
            else:
                grad = torch.matmul(grad, layer)
        grad = grad.expand(grad.shape[0], index.numel(), self.width)
        return grad.gather(0, index.view(1, -1, 1).expand(1, -1, self.width)).squeeze(0)

    def _picked_grad_grouped(self, saved: list[Tensor | None], index: Tensor) -> Tensor:
        # Only the picked critic's backward: states grouped by the critic that won them, one
        # matmul per group. Half the backward arithmetic of the batched form for twin critics,
        # for a few more small ops and a host sync on the group sizes (hence CPU only).
        order = torch.argsort(index, stable=True)
        picked = index[order]
        sizes = torch.bincount(index, minlength=self.fixed.shape[0]).tolist()
        last, *layers = self._backward_weights()
        grad = last[picked, 0]  # [N, hidden]
        saved_iter = reversed(saved)
        for layer in layers:
            if isinstance(layer, nn.Module):
                kept = next(saved_iter)
                grad = _activation_backward(
                    layer, grad, None if kept is None else kept[picked, order]
                )
            else:
                grad = torch.cat(
                    [
                        torch.matmul(rows, weight)
                        for rows, weight in zip(grad.split(sizes), layer, strict=True)
                    ]
                )
        out = torch.empty_like(grad)
        out[order] = grad
        return out


class HMCActor(TensorDictModuleBase):
    """A stochastic actor refined by ``K`` steps of (gated) Hamiltonian dynamics on the critic.

    The wrapped policy proposes ``u0 ~ pi_theta(.|s)`` (a Gaussian in the unsquashed space: the
    pre-tanh Normal of a ``TanhNormal``), a momentum ``rho0 ~ N(0, I)`` is drawn, and
    :class:`~torchrl_mcmc.mcmc.HamiltonianFlow` integrates ``K`` leapfrog steps on the potential

    .. code-block:: text

        U(u) = -( Q(s, squash(u)) / beta + log pi_theta_t(u | s) ),

    where ``pi_theta_t`` is a frozen snapshot of the policy (the *prior*, refreshed by
    :meth:`refresh_prior` once per policy iteration) and ``Q`` the minimum over the critics the
    actor holds. Only the end point is squashed into the action spec's box, so the density of
    ``(uK, rhoK)`` is exactly ``pi_theta(u0|s) N(rho0)`` (eq. 16) and never evaluated out of
    bounds.

    Acting follows TorchRL's interaction types: under ``RANDOM`` (what collectors set for
    exploration) ``u0`` and ``rho0`` are sampled; under ``DETERMINISTIC``/``MODE``/``MEAN`` the
    chain starts from the base mode ``u0 = loc`` with ``rho0 = 0`` and is fully deterministic.
    With no interaction type set, the wrapped policy's ``default_interaction_type`` decides.
    The chain switches autograd on for its own ``grad_u U`` evaluations, so it works inside a
    collector's :func:`torch.no_grad`; written outputs are detached.

    **The critic the actor sees.** TorchRL losses keep their critic parameters to themselves
    (``convert_to_functional``; with twin critics they even create new ones). A loss that trains
    this actor's critic must hand its parameters over with :meth:`bind_critic_params`; the actor
    then evaluates exactly the tensors the loss optimises, and, because they are registered in
    the actor, its ``state_dict`` and weight syncs to collector workers carry them. Until then the
    actor uses the critic module's own parameters.

    Args:
        policy: a TorchRL probabilistic actor (e.g. :class:`~torchrl.modules.ProbabilisticActor`)
            whose distribution is a ``TanhNormal``, ``IndependentNormal`` or ``Normal``.
        critic: a critic module (e.g. :class:`~torchrl.modules.ValueOperator`) reading the state
            and ``action_key`` and writing one state-action value.

    Keyword Args:
        action_spec: the environment's action spec; must be :class:`~torchrl.data.Bounded`
            with finite bounds. Defaults to ``policy.spec[action_key]``.
        num_steps: ``K >= 0`` leapfrog steps (paper: 5). ``0`` is the plain policy.
        step_size: initial per-dimension step size ``> 0``. The default ``0.05`` is the
            starting point of our Pendulum trial runs (DESIGN §1.4); the step sizes are learned.
        gated: use the gated gradient of eqs. 18–19 (``False``: plain leapfrog, eq. 13).
        gate_hidden: hidden width of the gate nets (paper: 8 or 16).
        gate_state_key: key of a flat state feature the gates read (``None``: gates ignore the
            state, the paper's default). Requires ``gate_state_dim``.
        gate_state_dim: width of ``gate_state_key``'s last dimension.
        beta: initial KL multiplier ``beta > 0`` (a buffer that a PID controller overwrites).
        action_key: where the action is written; defaults to the policy's sample key.
        hmc_key: prefix of the chain's outputs (``(hmc_key, "u0")`` ...).
        flow: a prebuilt :class:`HamiltonianFlow` (then ``num_steps``, ``step_size``, ``gated``
            and ``gate_*`` are ignored).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torch import nn
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal
        >>> from torchrl.modules import ValueOperator
        >>> spec = Bounded(-2.0, 2.0, shape=(1,))
        >>> policy = ProbabilisticActor(
        ...     TensorDictModule(
        ...         nn.Sequential(MLP(in_features=3, out_features=2, num_cells=[32]),
        ...                       NormalParamExtractor()),
        ...         in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], distribution_class=TanhNormal,
        ...     distribution_kwargs={"low": -2.0, "high": 2.0}, spec=spec)
        >>> critic = ValueOperator(MLP(in_features=4, out_features=1, num_cells=[32]),
        ...                        in_keys=["observation", "action"])
        >>> actor = HMCActor(policy, critic, num_steps=5)
        >>> td = actor(TensorDict({"observation": torch.randn(8, 3)}, batch_size=[8]))
        >>> td["action"].shape, bool((td["action"].abs() <= 2).all())
        (torch.Size([8, 1]), True)
        >>> td["hmc", "uK"].shape, td["hmc", "u0_log_prob"].shape
        (torch.Size([8, 1]), torch.Size([8]))
    """

    def __init__(
        self,
        policy: ProbabilisticTensorDictSequential,
        critic: TensorDictModuleBase,
        *,
        action_spec: TensorSpec | None = None,
        num_steps: int = 5,
        step_size: float = 0.05,
        gated: bool = True,
        gate_hidden: int = 16,
        gate_state_key: NestedKey | None = None,
        gate_state_dim: int | None = None,
        beta: float = 1.0,
        action_key: NestedKey | None = None,
        hmc_key: NestedKey = "hmc",
        flow: HamiltonianFlow | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(policy, ProbabilisticTensorDictSequential):
            raise TypeError(
                "policy must be a tensordict ProbabilisticTensorDictSequential (e.g. torchrl's "
                f"ProbabilisticActor), got {type(policy).__name__}."
            )
        dist_class = _probabilistic_module(policy).distribution_class
        if not (isinstance(dist_class, type) and issubclass(dist_class, _GAUSSIAN_CLASSES)):
            raise ValueError(
                "the policy's distribution must be Gaussian in the unsquashed space (TanhNormal, "
                f"IndependentNormal or Normal), got {getattr(dist_class, '__name__', dist_class)}."
            )
        if action_key is None:
            action_key = policy.dist_sample_keys[0]
        if action_key not in critic.in_keys:
            raise ValueError(
                f"the critic must read the action key {action_key!r}; its in_keys are "
                f"{critic.in_keys}. Pass action_key=... or build the critic on that key."
            )
        if len(critic.out_keys) < 1:
            raise ValueError("the critic writes no output key; it must write a state-action value.")
        action_spec = self._resolve_action_spec(policy, action_spec, action_key)
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be finite and > 0, got beta={beta!r}.")
        if gate_state_key is not None and gate_state_dim is None:
            raise ValueError("gate_state_key was given without gate_state_dim (its width).")

        action_dim = action_spec.shape[-1]
        if flow is None:
            flow = HamiltonianFlow(
                action_dim,
                num_steps=num_steps,
                step_size=step_size,
                gated=gated,
                gate_hidden=gate_hidden,
                state_dim=gate_state_dim if gate_state_key is not None else 0,
            )
        elif flow.action_dim != action_dim:
            raise ValueError(
                f"flow.action_dim={flow.action_dim} does not match the action spec's {action_dim}."
            )

        self.policy = policy
        self.critic = critic
        self.flow = flow
        # The prior pi_theta_t: a frozen snapshot, refreshed explicitly, never trained.
        self.prior = copy.deepcopy(policy).requires_grad_(False)
        self.register_module("critic_params", None)
        self.register_buffer("beta", torch.tensor(float(beta)))
        self.register_buffer("action_low", action_spec.space.low.detach().clone().float())
        self.register_buffer("action_high", action_spec.space.high.detach().clone().float())

        self.action_key = action_key
        self.value_key = critic.out_keys[0]
        # None for critics the fast path does not cover: they take the generic TensorDict path.
        self._fast_critic = _PiecewiseLinearCritic.from_critic(critic)
        self._plain_policy = _plain_policy(policy)  # the prior is a copy: same structure
        self.gate_state_key = gate_state_key
        self._critic_state_keys = [k for k in critic.in_keys if k != action_key]
        hmc_key = (hmc_key,) if isinstance(hmc_key, str) else tuple(hmc_key)
        self.hmc_keys = {
            name: (*hmc_key, name)
            for name in ("u0", "rho0", "uK", "rhoK", "u0_log_prob", "divergent")
        }
        extra = [gate_state_key] if gate_state_key is not None else []
        self.in_keys = _unique([*policy.in_keys, *self._critic_state_keys, *extra])
        self.out_keys = [action_key, *self.hmc_keys.values()]

    @staticmethod
    def _resolve_action_spec(
        policy: nn.Module, action_spec: TensorSpec | None, action_key: NestedKey
    ) -> Bounded:
        if action_spec is None:
            spec = getattr(policy, "spec", None)
            if isinstance(spec, Composite) and action_key in spec.keys(True):
                action_spec = spec[action_key]
            elif isinstance(spec, TensorSpec) and not isinstance(spec, Composite):
                action_spec = spec
        if action_spec is None:
            raise ValueError(
                "no action spec: pass action_spec=env.action_spec (a Bounded spec), or give the "
                "policy a spec."
            )
        if not isinstance(action_spec, Bounded):
            raise ValueError(
                "action_spec must be a Bounded (Box) spec with finite bounds, got "
                f"{type(action_spec).__name__}: HMC squashes its end point into the box."
            )
        low, high = action_spec.space.low, action_spec.space.high
        if not (low.isfinite().all() and high.isfinite().all() and (high > low).all()):
            raise ValueError(
                f"action_spec bounds must be finite with high > low, got low={low}, high={high}."
            )
        return action_spec

    @property
    def has_fast_critic(self) -> bool:
        """Whether the critic takes the fast path of :meth:`critic_values` (a ReLU ``MLP``)."""
        return self._fast_critic is not None

    # ------------------------------------------------------------------ critic hand-over
    def bind_critic_params(self, params: TensorDictParams) -> None:
        """Makes the actor evaluate ``Q`` with ``params`` (the ones a loss trains).

        Args:
            params: parameters of :attr:`critic` with a leading critic dimension, e.g.
                ``loss.qvalue_network_params`` of shape ``[num_qvalue_nets]``. The same object is
                kept (not a copy), so every optimiser step on it is seen by the next action.
        """
        if not isinstance(params, TensorDictParams) or params.ndim != 1:
            raise ValueError(
                "params must be a TensorDictParams with one leading critic dimension, got "
                f"{type(params).__name__} of shape {getattr(params, 'shape', None)}."
            )
        self.critic_params = params

    def critic_value(
        self,
        tensordict: TensorDictBase,
        action: Tensor,
        critic_params: TensorDictBase | None = None,
    ) -> Tensor:
        """``Q(s, action)``, shape ``[*batch]``: the minimum over the bound critics.

        Args:
            tensordict: holds the critic's state keys.
            action: the (squashed) action.
            critic_params: overrides the bound parameters (e.g. detached ones in a loss); with
                a leading dimension the minimum over its entries is taken.
        """
        return self.critic_values(tensordict, action, critic_params).min(dim=0).values

    def critic_values(
        self,
        tensordict: TensorDictBase,
        action: Tensor,
        critic_params: TensorDictBase | None = None,
    ) -> Tensor:
        """Every critic's ``Q(s, action)``, shape ``[num_critics, *batch]``.

        ``num_critics`` is the leading dimension of the parameters (1 for unbatched parameters
        or the critic module's own). Arguments as in :meth:`critic_value`.
        """
        params = self.critic_params if critic_params is None else critic_params
        fast = self._fast_critic
        if fast is not None:
            inputs = [self._critic_input(tensordict, key, action) for key in self.critic.in_keys]
            return fast(inputs, fast.weights(params, detach=False))
        return self._generic_critic_values(
            tensordict.select(*self._critic_state_keys), action, params
        )

    def _critic_input(self, tensordict: TensorDictBase, key: NestedKey, action: Tensor | None):
        return action if key == self.action_key else tensordict.get(key)

    def _generic_critic_values(
        self, states: TensorDictBase, action: Tensor, params: TensorDictBase | None
    ) -> Tensor:
        """Any ``TensorDictModuleBase`` critic, through its TensorDict interface."""
        td = states.copy().set(self.action_key, action)
        if params is None:
            return self.critic(td).get(self.value_key).squeeze(-1).unsqueeze(0)
        if params.ndim == 0:
            return self._critic_with_params(td, params).squeeze(-1).unsqueeze(0)
        values = torch.vmap(self._critic_with_params, (None, 0), randomness="different")(td, params)
        return values.squeeze(-1)

    def _critic_with_params(self, td: TensorDictBase, params: TensorDictBase) -> Tensor:
        with params.to_module(self.critic):
            return self.critic(td.copy()).get(self.value_key)

    def _critic_action_grad(
        self, tensordict: TensorDictBase, params: TensorDictBase | None, *, create_graph: bool
    ) -> Callable[[Tensor], Tensor]:
        """``action -> grad_a min_i Q_i(s, action)`` at the states of ``tensordict``.

        Set up once per chain. ``create_graph`` keeps the gradient's graph (to the action and
        to parameters that require gradients) wherever it is not identically zero; without it
        the critic's parameters are detached, as acting needs ``grad_a Q`` only.
        """
        fast = self._fast_critic
        if fast is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() or create_graph):
                layers = fast.weights(params, detach=not create_graph)
                inputs = [self._critic_input(tensordict, key, None) for key in self.critic.in_keys]
                bound = fast.bind(inputs, layers)
            constant_params = not any(
                t is not None and t.requires_grad
                for layer in layers
                if isinstance(layer, tuple)
                for t in layer
            )
            if constant_params:
                # Piecewise linear in the action: autograd's derivative of grad_a Q w.r.t. the
                # action is exactly zero, so with constant parameters the closed form is the
                # whole answer, create_graph or not (see potential_grad_fn).
                return lambda action: bound.min_value_and_grad(action.detach())[1]

            def min_value(action: Tensor) -> Tensor:
                return bound.values(action).min(dim=0).values

        else:
            states = tensordict.select(*self._critic_state_keys)

            def min_value(action: Tensor) -> Tensor:
                return self._generic_critic_values(states, action, params).min(dim=0).values

        def by_autograd(action: Tensor) -> Tensor:
            with torch.enable_grad():
                if not (create_graph and action.requires_grad):
                    action = action.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(
                    min_value(action).sum(), action, create_graph=create_graph
                )
            return grad

        return by_autograd

    # ------------------------------------------------------------------ prior
    @torch.no_grad()
    def refresh_prior(self) -> None:
        """Copies the policy's current parameters and buffers into the frozen prior ``theta_t``.

        Call once per policy iteration (one collector batch), not after every SGD step: with
        ``theta_t = theta`` the KL term of objective (17) has zero expected gradient and stops
        regularising (DESIGN §1.1).
        """
        for target, source in zip(self.prior.parameters(), self.policy.parameters(), strict=True):
            target.copy_(source)
        for target, source in zip(self.prior.buffers(), self.policy.buffers(), strict=True):
            target.copy_(source)

    # ------------------------------------------------------------------ the chain
    def potential_fn(
        self,
        tensordict: TensorDictBase,
        prior_loc: Tensor,
        prior_scale: Tensor,
        critic_params: TensorDictBase | None = None,
    ) -> Callable[[Tensor], Tensor]:
        """The potential ``U(u) = -(Q(s, squash(u)) / beta + log pi_theta_t(u|s))``.

        ``pi_theta_t``'s parameters depend on the state only, so they are computed once per chain
        (``prior_loc``, ``prior_scale``) rather than at every leapfrog step.
        """
        beta = self.beta

        def potential(u: Tensor) -> Tensor:
            action = squash(u, self.action_low.to(u.dtype), self.action_high.to(u.dtype))
            q = self.critic_value(tensordict, action, critic_params)
            return -(q / beta + normal_log_prob(u, prior_loc, prior_scale))

        return potential

    def potential_grad_fn(
        self,
        tensordict: TensorDictBase,
        prior_loc: Tensor,
        prior_scale: Tensor,
        critic_params: TensorDictBase | None = None,
        *,
        create_graph: bool = False,
    ) -> Callable[[Tensor], Tensor]:
        """``grad_u U`` of :meth:`potential_fn`'s ``U``, as the chain's leapfrog steps need it.

        With ``a = squash(u) = low + (high - low) * (tanh(u) + 1) / 2``,

        .. code-block:: text

            grad_u U = -(high - low) / 2 * (1 - tanh(u)^2) * grad_a Q(s, a) / beta
                       + (u - prior_loc) / prior_scale^2

        The squash and prior terms are written out and the critic's state inputs are read once
        per chain; only ``grad_a Q`` is left to compute. Any critic gets it from autograd. The
        usual critic, a ReLU ``MLP`` in a ``ValueOperator``/``TensorDictModule``, gets it in
        closed form (:class:`_PiecewiseLinearCritic`), and when its parameters need no gradient
        (acting, and the loss's detached critics) it records no graph even with
        ``create_graph=True``: ``Q`` is piecewise linear in the action, autograd itself
        differentiates ``grad_a Q`` w.r.t. the action to exact zeros (the backward of ReLU
        differentiates to ``zeros_like``), so a constant ``grad_a Q`` gives the same values and
        the same gradients, and training's backward skips ``K + 1`` second-order passes through
        the critics.

        Args and keyword args: as :meth:`potential_fn`; ``create_graph`` as in
        :meth:`~torchrl_mcmc.mcmc.HamiltonianFlow.forward`.

        Examples:
            The closed form agrees with autograd through :meth:`potential_fn`, to first and
            second order, for a ReLU critic (the fast path) as for any other:

            >>> import torch
            >>> from tensordict import TensorDict
            >>> from tensordict.nn import TensorDictModule
            >>> from torch import nn
            >>> from torchrl.data import Bounded
            >>> from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor
            >>> from torchrl.modules import TanhNormal, ValueOperator
            >>> from torchrl_mcmc.mcmc import potential_grad
            >>> net = nn.Sequential(MLP(in_features=3, out_features=4, num_cells=[16]),
            ...                     NormalParamExtractor())
            >>> policy = ProbabilisticActor(
            ...     TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
            ...     in_keys=["loc", "scale"], distribution_class=TanhNormal,
            ...     spec=Bounded(-1.0, 1.0, shape=(2,)))
            >>> for activation in (nn.ReLU, nn.Tanh):
            ...     critic = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[16, 16],
            ...                                activation_class=activation),
            ...                            in_keys=["observation", "action"])
            ...     actor = HMCActor(policy, critic, beta=0.5)
            ...     twins = TensorDict.from_module(critic).data.expand(2).clone()  # detached twins
            ...     twins["module", "0", "bias"] += torch.randn(2, 16)
            ...     for n in (8, 64):  # both ways the fast path takes the picked critic's gradient
            ...         td = TensorDict({"observation": torch.randn(n, 3)}, batch_size=[n])
            ...         loc, scale = torch.randn(n, 2), torch.rand(n, 2) + 0.5
            ...         u = torch.randn(n, 2, requires_grad=True)
            ...         potential = actor.potential_fn(td, loc, scale, twins)
            ...         grad_fn = actor.potential_grad_fn(td, loc, scale, twins, create_graph=True)
            ...         closed, auto = grad_fn(u), potential_grad(potential, u, create_graph=True)
            ...         torch.testing.assert_close(closed, auto)
            ...         second = [torch.autograd.grad((g**2).sum(), u)[0] for g in (closed, auto)]
            ...         torch.testing.assert_close(*second)
            ...     print(activation.__name__, actor.has_fast_critic)
            ReLU True
            Tanh False
        """
        params = self.critic_params if critic_params is None else critic_params
        critic_grad = self._critic_action_grad(tensordict, params, create_graph=create_graph)
        low = self.action_low.to(prior_loc.dtype)
        high = self.action_high.to(prior_loc.dtype)
        # Per-chain constants: squash(u) = mid + half_range * tanh(u), and the critic term's
        # factor half_range / beta (squash'(u) = half_range * (1 - tanh(u)^2)).
        half_range = 0.5 * (high - low)
        mid = low + half_range
        critic_coef = half_range / self.beta
        prior_precision = prior_scale.pow(-2)

        def grad(u: Tensor) -> Tensor:
            if not create_graph:
                u = u.detach()
            with torch.set_grad_enabled(create_graph):
                tanh_u = torch.tanh(u)
                grad_q = critic_grad(mid + half_range * tanh_u)
                critic_term = (1.0 - tanh_u * tanh_u) * critic_coef * grad_q
                return (u - prior_loc) * prior_precision - critic_term

        return grad

    def sample(
        self,
        tensordict: TensorDictBase,
        *,
        explore: bool = True,
        create_graph: bool = False,
        critic_params: TensorDictBase | None = None,
    ) -> HMCSample:
        """Runs policy, prior and chain on ``tensordict`` without writing into it.

        This is what losses call: with ``create_graph=True`` the returned tensors are
        differentiable w.r.t. the policy (through the reparameterised ``u0`` and the whole
        chain) and the flow's parameters ``h``.

        Keyword Args:
            explore: sample ``u0, rho0`` (``True``) or start from ``loc`` with ``rho0 = 0``.
            create_graph: keep the autograd graph through the chain.
            critic_params: parameters for ``Q`` in the potential (default: the bound ones).
                Losses pass detached parameters so that the policy term never reaches the critic.
        """
        plain = self._plain_policy
        loc, scale = _gaussian_params(_policy_dist(self.policy, tensordict, plain))
        prior_loc, prior_scale = _gaussian_params(_policy_dist(self.prior, tensordict, plain))
        if explore:
            u0 = loc + scale * torch.randn_like(loc)
            rho0 = torch.randn_like(loc)
        else:
            u0, rho0 = loc, torch.zeros_like(loc)
        state = tensordict.get(self.gate_state_key) if self.gate_state_key is not None else None
        potential = self.potential_fn(tensordict, prior_loc, prior_scale, critic_params)
        potential_grad = self.potential_grad_fn(
            tensordict, prior_loc, prior_scale, critic_params, create_graph=create_graph
        )
        out = self.flow(
            u0,
            rho0,
            potential,
            state=state,
            create_graph=create_graph,
            potential_grad_fn=potential_grad,
        )
        if out.divergent.any():
            logger.warning(
                "HMC chain diverged for %d of %d samples; they fall back to u0.",
                int(out.divergent.sum()),
                out.divergent.numel(),
            )
        action = squash(out.position, self.action_low.to(loc.dtype), self.action_high.to(loc.dtype))
        return HMCSample(
            action=action,
            u0=u0,
            rho0=rho0,
            uK=out.position,
            rhoK=out.momentum,
            log_prob=normal_log_prob(u0, loc, scale),
            loc=loc,
            scale=scale,
            prior_loc=prior_loc,
            prior_scale=prior_scale,
            divergent=out.divergent,
        )

    @property
    def default_interaction_type(self) -> InteractionType:
        """The wrapped policy's default, used when no interaction type is set."""
        return self.policy.default_interaction_type

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        mode = interaction_type()
        if mode is None:
            mode = self.default_interaction_type
        with torch.no_grad():
            out = self.sample(tensordict, explore=mode == InteractionType.RANDOM)
        tensordict.set(self.action_key, out.action)
        keys = self.hmc_keys
        tensordict.set(keys["u0"], out.u0)
        tensordict.set(keys["rho0"], out.rho0)
        tensordict.set(keys["uK"], out.uK)
        tensordict.set(keys["rhoK"], out.rhoK)
        tensordict.set(keys["u0_log_prob"], out.log_prob)
        tensordict.set(keys["divergent"], out.divergent)
        return tensordict
