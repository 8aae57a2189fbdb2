"""``LangevinFlowActor``: a TorchRL deterministic actor whose action is refined by a Langevin flow.

Paper §3.1, eqs. 6–9; docs/method.md §1.2.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, TensorDictModuleBase, TensorDictSequential
from tensordict.nn.probabilistic import interaction_type
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.data import Bounded, Composite, TensorSpec
from torchrl.modules import TanhModule

from torchrl_mcmc.mcmc.gaussian import squash
from torchrl_mcmc.mcmc.langevin import LangevinFlow, smoothed_norm
from torchrl_mcmc.mcmc.settings import check_number, check_positive_float
from torchrl_mcmc.modules._fast_paths import (
    deterministic_policy_output,
    plain_deterministic_policy,
)
from torchrl_mcmc.modules.common import MCMCActorBase, PotentialCritic, unique_keys

__all__ = ["LangevinFlowActor", "LangevinSample", "add_action_noise"]


class LangevinSample(NamedTuple):
    """Everything one pass of the actor computes, with graphs kept when asked for.

    ``u`` tensors live in the unsquashed space, actions in the action box; shapes ``[*batch, d]``
    except ``divergent`` (``[*batch]``).

    Attributes:
        action: ``aK = squash(uK)``, the flow's action (before any exploration noise).
        u0: the base policy's unsquashed output, ``a0 = squash(u0) = pi_theta(s)``.
        uK: the flow's end point (``u0`` where it diverged).
        prior_action: the frozen prior's action ``pi_theta_t(s)``.
        divergent: ``True`` where the flow produced a non-finite value and fell back to ``u0``.
    """

    action: Tensor
    u0: Tensor
    uK: Tensor
    prior_action: Tensor
    divergent: Tensor


def add_action_noise(
    action: Tensor, low: Tensor, high: Tensor, sigma: float | Tensor, clip: float | None = None
) -> Tensor:
    """TD3's Gaussian perturbation, in units of the box's half-width, clamped to the box.

    ``action + clamp(sigma * N(0, 1), -clip, clip) * (high - low) / 2``, then clamped to
    ``[low, high]``. For the usual ``[-1, 1]`` box this is exactly TD3's exploration noise
    (``clip=None``) and target-policy smoothing noise (``clip=noise_clip``); expressed relative
    to the half-width, the same numbers suit every box (Pendulum's is ``[-2, 2]``).

    Examples:
        >>> low, high = torch.tensor([-2.0]), torch.tensor([2.0])
        >>> noisy = add_action_noise(torch.full((100, 1), 1.9), low, high, sigma=1e4, clip=0.05)
        >>> noisy.unique()  # 1.9 -+ 0.05 half-widths (0.1), clamped to the box
        tensor([1.8000, 2.0000])
    """
    half_width = 0.5 * (high - low)
    noise = sigma * torch.randn_like(action)
    if clip is not None:
        noise = noise.clamp(-clip, clip)
    return torch.clamp(action + noise * half_width, low, high)


def _tanh_module(policy: TensorDictModuleBase) -> TanhModule:
    """The ``TanhModule`` that ends ``policy``, or an error saying what was expected."""
    last = policy[-1] if isinstance(policy, TensorDictSequential) and len(policy.module) else None
    if not isinstance(last, TanhModule):
        raise TypeError(
            "policy must be TorchRL's deterministic TD3 actor: a TensorDictSequential ending in "
            "a torchrl.modules.TanhModule, e.g. TensorDictSequential(Actor(net, "
            "out_keys=['param']), TanhModule(['param'], ['action'], spec=action_spec)), without "
            f"an exploration module (this actor adds its own noise); got {type(policy).__name__}"
            + (f" ending in {type(last).__name__}." if last is not None else ".")
        )
    if len(last.in_keys) != 1 or len(last.out_keys) != 1:
        raise ValueError(
            f"the policy's TanhModule must map one key to one key, got in_keys={last.in_keys}, "
            f"out_keys={last.out_keys}."
        )
    return last


class LangevinFlowActor(MCMCActorBase):
    """A deterministic actor refined by ``K`` Langevin coupling layers on the critic (§3.1).

    The wrapped TD3 actor proposes ``u0`` (its output *before* its ``TanhModule``, so the flow
    runs in the unsquashed space), :class:`~torchrl_mcmc.mcmc.LangevinFlow` moves it uphill on

    .. code-block:: text

        U(u) = Q(s, squash(u)) / beta - ||squash(u) - pi_theta_t(s)||_delta,

    and the end point is squashed into the action box: ``aK = squash(uK)``. The sign convention
    is ascent (``U`` is eq. 6's objective; eq. 9's printed minus would descend it). ``Q`` is the
    minimum over the critics the actor holds; ``pi_theta_t`` is a frozen snapshot of the policy
    (the *prior*, refreshed by :meth:`refresh_prior` once per policy iteration).

    Design choices (docs/method.md §1.2 records them):

    * **The distance is taken in action space**, between squashed actions: it is then the same
      quantity as ``D_LD = mean ||aK - pi_theta_t(s)||`` of §4.1 and objective (10), so the flow
      ascends exactly what the loss scores (``J = beta * U(uK)``), and it does not depend on how
      far into tanh's flat tails ``u`` has wandered.
    * ``||.||_delta`` **is the smoothed norm** ``sqrt(||x||^2 + delta^2) - delta``
      (:func:`~torchrl_mcmc.mcmc.smoothed_norm`, ``delta = distance_smoothing``). Right after a
      prior refresh the flow starts at ``a0 = pi_theta_t(s)`` exactly, where the plain norm is
      not differentiable (autograd gives NaN for ``sqrt(sum x^2)``, and NaN second derivatives
      even for ``torch.linalg.vector_norm``; training differentiates ``grad U`` once more).
      ``delta`` also bounds the regulariser's curvature by ``1 / delta``: an explicit step
      ``eps^2 / 2`` on it is stable while ``eps^2 / 2 * half_width^2 / delta < 2``, and the
      training gradient, which passes through the Jacobian of every layer, stays of the order
      of TD3's (a tiny ``delta`` makes it explode right after a refresh; the tests check it).
      The default ``0.01`` (action units) keeps the norm's behaviour for distances well above
      0.01 and the default step stable on boxes of half-width up to about 2 (Pendulum).
    * The flow's networks read the state (``state_key``) as context, so ``d = 1`` works.

    Acting follows TorchRL's TD3 exploration: under ``RANDOM`` (what collectors set) or with no
    interaction type set (as :class:`~torchrl.modules.AdditiveGaussianModule`), Gaussian noise of
    standard deviation ``exploration_noise`` times the box's half-width is added to ``aK`` and the
    result clamped to the box; under ``DETERMINISTIC``/``MODE``/``MEAN`` the action is ``aK``,
    a deterministic function of the state. ``exploration_noise`` is a buffer: anneal it in place
    (``actor.exploration_noise.fill_(0.05)``); with ``0`` the actor is deterministic in every mode
    (and a TorchRL ``AdditiveGaussianModule`` can follow it instead). The flow switches autograd
    on for its own ``grad_u U`` evaluations, so it works inside a collector's
    :func:`torch.no_grad`; written outputs are detached.

    **The critic's gradient.** Each layer needs ``grad_u U``: the squash and distance terms
    are written out (:meth:`potential_grad_fn`), and ``grad_a Q`` of the usual critic, a ReLU
    ``MLP`` in a ``ValueOperator``/``TensorDictModule`` (:attr:`has_fast_critic`), is computed
    in closed form, as :class:`~torchrl_mcmc.HMCActor` does; any other critic gets it from
    autograd. Both give the same actions, losses and gradients.

    **Defaults and the paper's configuration.** The defaults are the recipes'
    (``examples/ld_td3.py``), and the paper's configuration of the actor is the same
    (:attr:`PAPER_KWARGS` is empty): what the paper adds, the PID controller of ``beta``, is the
    training loop's (``pid.enabled=true``).

    **Non-finite values** are handled as by :class:`~torchrl_mcmc.HMCActor`: an observation
    with a NaN or an inf raises a ``ValueError`` naming its key and rows; a layer whose critic
    value or gradient is not finite makes the flow divergent, and it falls back to ``u0``.

    **Saved settings.** The state dict holds ``action_dim``, ``potential_critic``,
    ``pessimism`` and ``distance_smoothing`` (and the flow's ``num_layers``, ``hidden``,
    ``state_dim`` and ``scale_bound``): a state saved with others is refused on load, naming
    each.

    **The critic the actor sees** is handed over exactly as for
    :class:`~torchrl_mcmc.HMCActor`: a loss that trains it calls :meth:`bind_critic_params` with
    the parameters it optimises, which the actor then evaluates and carries in its
    ``state_dict`` (so weight syncs to collector workers carry them). Until then the actor uses
    the critic module's own parameters.

    Args:
        policy: TorchRL's deterministic TD3 actor, a
            :class:`~tensordict.nn.TensorDictSequential` whose last module is a
            :class:`~torchrl.modules.TanhModule` (the input key of that ``TanhModule`` is read as
            ``u0``; its output key is the action key). No exploration module: this actor adds
            the noise after the flow.
        critic: a critic (e.g. :class:`~torchrl.modules.ValueOperator`) reading the state and
            the action key and writing one state-action value.

    Keyword Args:
        state_dim: width of ``state_key``'s last dimension, read by the flow's networks (``0``:
            they read the conditioning half of the action only; not allowed when ``d = 1``).
            Required unless ``flow`` is given.
        action_spec: the environment's action spec, :class:`~torchrl.data.Bounded` with finite
            bounds equal to the ``TanhModule``'s. Defaults to the ``TanhModule``'s spec.
        num_layers: ``K >= 0`` coupling layers (``0``: the plain TD3 actor).
        step_size: initial ``eps > 0`` of every layer (learned). ``eps^2 / 2`` is the ascent step
            in ``u`` per unit of gradient, as in a leapfrog step from rest, so ``0.1`` moves a
            gradient of 20 by 0.1 in ``u``.
        hidden: hidden width of each layer's network (the paper's small nets).
        scale_bound: soft bound on the layers' log-scale ``S`` and ``sigma``.
        state_key: the flow's context; defaults to the policy's only input key.
        beta: initial multiplier ``beta > 0`` (a buffer a PID controller overwrites).
        distance_smoothing: ``delta > 0`` of the smoothed norm, in action units.
        exploration_noise: ``>= 0``, in units of the box's half-width (TD3: 0.1).
        potential_critic: which critics ``Q`` in the potential reads: ``"min"`` (over the
            bound critics), ``"first"`` (the first alone, one critic evaluation per layer) or
            ``"mean_std"`` (``mean - pessimism * std`` over the critics: a lower confidence
            bound against the flow climbing into actions the critics overrate; with twin
            critics ``pessimism=1`` is their minimum). ``"mean_std"`` also sets the ``Q`` that
            :class:`~torchrl_mcmc.LangevinFlowLoss`'s objective scores (the minimum otherwise).
        pessimism: ``k >= 0`` of ``potential_critic="mean_std"``; ``None`` (the default): 2
            there, 1 (unused) with the other critics, where it must stay 1.
        flow_key: prefix of the flow's outputs (``(flow_key, "uK")`` ...).
        flow: a prebuilt :class:`~torchrl_mcmc.mcmc.LangevinFlow` (then ``num_layers``,
            ``step_size``, ``hidden``, ``scale_bound`` and ``state_dim`` come from it, and are
            ignored with a warning where set).

    Raises:
        TypeError: ``critic`` is no ``TensorDictModuleBase``, or a number argument is not one
            (a ``bool`` included).
        ValueError: an argument out of range, named with its value: ``beta`` (finite, ``> 0``,
            with a finite non-zero ``float32`` value and reciprocal), ``step_size`` (a finite,
            normal ``float32``: ``1e-50`` is ``0`` there, ``1e40`` inf), the action spec, a
            critic that does not read the action or whose ``MLP`` has more than one output
            feature. At call time, a ``KeyError`` names the input entries (``in_keys``)
            missing, and a ``ValueError`` the non-finite ones.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule, TensorDictSequential
        >>> from torchrl.data import Bounded
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> from torchrl.modules import MLP, TanhModule, ValueOperator
        >>> from torchrl_mcmc import LangevinFlowActor
        >>> spec = Bounded(-2.0, 2.0, shape=(1,))
        >>> policy = TensorDictSequential(  # TorchRL's TD3 actor
        ...     TensorDictModule(MLP(in_features=3, out_features=1, num_cells=[32]),
        ...                      in_keys=["observation"], out_keys=["param"]),
        ...     TanhModule(in_keys=["param"], out_keys=["action"], spec=spec))
        >>> critic = ValueOperator(MLP(in_features=4, out_features=1, num_cells=[32]),
        ...                        in_keys=["observation", "action"])
        >>> actor = LangevinFlowActor(policy, critic, state_dim=3, num_layers=4)
        >>> td = actor(TensorDict({"observation": torch.randn(8, 3)}, batch_size=[8]))
        >>> td["action"].shape, bool((td["action"].abs() <= 2).all())
        (torch.Size([8, 1]), True)
        >>> with set_exploration_type(ExplorationType.DETERMINISTIC):
        ...     td = actor(td)
        >>> from torchrl_mcmc.mcmc import squash
        >>> torch.equal(td["action"], squash(td["flow", "uK"], -2.0, 2.0))
        True
    """

    def __init__(
        self,
        policy: TensorDictSequential,
        critic: TensorDictModuleBase,
        *,
        state_dim: int | None = None,
        action_spec: TensorSpec | None = None,
        num_layers: int = 4,
        step_size: float = 0.1,
        hidden: int = 16,
        scale_bound: float = 1.0,
        state_key: NestedKey | None = None,
        beta: float = 1.0,
        distance_smoothing: float = 0.01,
        exploration_noise: float = 0.1,
        potential_critic: PotentialCritic = "min",
        pessimism: float | None = None,
        flow_key: NestedKey = "flow",
        flow: LangevinFlow | None = None,
    ) -> None:
        super().__init__()
        self._set_potential_critic(potential_critic, pessimism)
        tanh = _tanh_module(policy)
        action_key = tanh.out_keys[0]
        self._check_critic(critic, action_key, "It is the output key of the policy's TanhModule.")
        action_spec = self._resolve_action_spec(tanh, action_spec, action_key)
        # In the buffer's dtype: 1e-300 is 0 in float32, 1e39 inf, and Q / beta enters U.
        beta = check_positive_float("beta", beta, reciprocal=True)
        distance_smoothing = check_number("distance_smoothing", distance_smoothing)
        exploration_noise = check_number("exploration_noise", exploration_noise, positive=False)

        action_dim = action_spec.shape[-1]
        if flow is None:
            if state_dim is None:
                raise ValueError(
                    "state_dim is required: the width of the state the flow's networks read "
                    "(e.g. env.observation_spec['observation'].shape[-1]), or 0 for none."
                )
            flow = LangevinFlow(
                action_dim,
                num_layers=num_layers,
                step_size=step_size,
                hidden=hidden,
                state_dim=state_dim,
                scale_bound=scale_bound,
            )
        elif flow.action_dim != action_dim:
            raise ValueError(
                f"flow.action_dim={flow.action_dim} does not match the action spec's {action_dim}."
            )
        else:
            self._warn_ignored(
                "the prebuilt flow's settings apply",
                num_layers=num_layers,
                step_size=step_size,
                hidden=hidden,
                scale_bound=scale_bound,
                state_dim=state_dim,
            )
        if flow.state_dim and state_key is None:
            if len(policy.in_keys) != 1:
                raise ValueError(
                    f"the policy reads several keys {policy.in_keys}: pass state_key=... (the "
                    "flat state feature the flow's networks read)."
                )
            state_key = policy.in_keys[0]

        self.policy = policy
        self._set_critic(critic, action_key)
        self.flow = flow
        self.action_dim = action_dim
        # The prior pi_theta_t: a frozen snapshot, refreshed explicitly, never trained.
        self.prior = copy.deepcopy(policy).requires_grad_(False)
        self.register_module("critic_params", None)
        self.register_buffer("beta", torch.tensor(float(beta)))
        self.register_buffer("exploration_noise", torch.tensor(exploration_noise))
        self.register_buffer("action_low", action_spec.space.low.detach().clone().float())
        self.register_buffer("action_high", action_spec.space.high.detach().clone().float())
        self.distance_smoothing = distance_smoothing

        self.base_key = tanh.in_keys[0]
        # The prior is a copy: same structure, same path.
        self._plain_policy = plain_deterministic_policy(policy, self.base_key)
        self.state_key = state_key if flow.state_dim else None
        flow_key = (flow_key,) if isinstance(flow_key, str) else tuple(flow_key)
        self.flow_keys = {name: (*flow_key, name) for name in ("u0", "uK", "divergent")}
        extra = [self.state_key] if self.state_key is not None else []
        self.in_keys = unique_keys([*policy.in_keys, *self._critic_state_keys, *extra])
        self.out_keys = [action_key, *self.flow_keys.values()]

    @staticmethod
    def _resolve_action_spec(
        tanh: TanhModule, action_spec: TensorSpec | None, action_key: NestedKey
    ) -> Bounded:
        if action_spec is None:
            spec = tanh.spec
            if isinstance(spec, Composite) and action_key in spec.keys(True):
                action_spec = spec[action_key]
        action_spec = MCMCActorBase._check_box(
            action_spec, "or build the policy's TanhModule with spec=...", "the flow"
        )
        low, high = action_spec.space.low, action_spec.space.high
        name = action_key if isinstance(action_key, str) else "_".join(action_key)
        tanh_low, tanh_high = getattr(tanh, f"{name}_low"), getattr(tanh, f"{name}_high")
        if tanh_low.ndim and tanh_low.shape[-1:] != low.shape[-1:]:
            raise ValueError(
                f"the action spec's dimension {low.shape[-1]} is not that of the policy's "
                f"TanhModule, {tanh_low.shape[-1]}: build the policy for the action spec."
            )
        same = [
            torch.allclose(bound.to(ref.dtype).expand_as(ref), ref)
            for bound, ref in ((tanh_low, low), (tanh_high, high))
        ]
        if not all(same):
            raise ValueError(
                f"the policy's TanhModule maps into [{tanh_low}, {tanh_high}] but the action "
                f"spec's box is [{low}, {high}]; build the TanhModule with spec=action_spec."
            )
        return action_spec

    def settings(self) -> dict[str, Any]:
        """``action_dim``, ``potential_critic``, ``pessimism`` and ``distance_smoothing``: saved
        in the state dict and checked on load, with the flow's (:meth:`LangevinFlow.settings`)."""
        return {
            "action_dim": self.action_dim,
            "potential_critic": self.potential_critic,
            "pessimism": self.pessimism,
            "distance_smoothing": self.distance_smoothing,
        }

    # ------------------------------------------------------------------ the flow
    def potential_fn(
        self,
        tensordict: TensorDictBase,
        prior_action: Tensor,
        critic_params: TensorDictBase | None = None,
    ) -> Callable[[Tensor], Tensor]:
        """``U(u) = Q(s, squash(u)) / beta - ||squash(u) - pi_theta_t(s)||_delta`` (maximised).

        ``pi_theta_t(s)`` depends on the state only, so it is computed once per flow
        (``prior_action``) rather than in every layer.
        """
        beta, smoothing = self.beta, self.distance_smoothing

        def potential(u: Tensor) -> Tensor:
            action = squash(u, self.action_low.to(u.dtype), self.action_high.to(u.dtype))
            q = self.potential_value(tensordict, action, critic_params)
            return q / beta - smoothed_norm(action - prior_action, smoothing)

        return potential

    def potential_grad_fn(
        self,
        tensordict: TensorDictBase,
        prior_action: Tensor,
        critic_params: TensorDictBase | None = None,
        *,
        create_graph: bool = False,
    ) -> Callable[[Tensor], Tensor]:
        """``grad_u U`` of :meth:`potential_fn`'s ``U``, as the flow's layers need it.

        With ``a = squash(u) = low + (high - low) * (tanh(u) + 1) / 2`` and
        ``v = a - pi_theta_t(s)``,

        .. code-block:: text

            grad_u U = (high - low) / 2 * (1 - tanh(u)^2)
                       * ( grad_a Q(s, a) / beta - v / sqrt(||v||^2 + delta^2) )

        The squash and distance terms are written out and the critic's state inputs are read
        once per flow; only ``grad_a Q`` is left to compute (:meth:`_critic_action_grad`: in
        closed form for a ReLU ``MLP`` critic, by autograd for any other). With the loss's
        detached critics the closed form records no graph even with ``create_graph=True``,
        which is exact (``grad_a Q`` of a piecewise-linear critic has zero derivative w.r.t. the
        action) and spares training's backward ``K`` second-order passes through the critics.

        Args and keyword args: as :meth:`potential_fn`; ``create_graph`` as in
        :meth:`~torchrl_mcmc.mcmc.LangevinFlow.forward`.

        Examples:
            The closed form (a ReLU critic: the fast path) agrees with autograd through
            :meth:`potential_fn`:

            >>> import torch
            >>> from tensordict import TensorDict
            >>> from tensordict.nn import TensorDictModule, TensorDictSequential
            >>> from torch import nn
            >>> from torchrl.data import Bounded
            >>> from torchrl.modules import MLP, TanhModule, ValueOperator
            >>> from torchrl_mcmc.mcmc import potential_grad
            >>> spec = Bounded(-2.0, 2.0, shape=(2,))
            >>> policy = TensorDictSequential(
            ...     TensorDictModule(MLP(in_features=3, out_features=2, num_cells=[16]),
            ...                      in_keys=["observation"], out_keys=["param"]),
            ...     TanhModule(in_keys=["param"], out_keys=["action"], spec=spec))
            >>> critic = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[16, 16],
            ...                            activation_class=nn.ReLU),
            ...                        in_keys=["observation", "action"])
            >>> actor = LangevinFlowActor(policy, critic, state_dim=3, beta=0.5)
            >>> actor.has_fast_critic
            True
            >>> td = TensorDict({"observation": torch.randn(8, 3)}, batch_size=[8])
            >>> prior_action, u = torch.rand(8, 2) * 4 - 2, torch.randn(8, 2)
            >>> closed = actor.potential_grad_fn(td, prior_action)(u)
            >>> potential = actor.potential_fn(td, prior_action)
            >>> torch.testing.assert_close(closed, potential_grad(potential, u, create_graph=False))
        """
        inv_beta = 1.0 / self.beta  # per-flow constants
        smoothing_sq = self.distance_smoothing**2
        critic_params = self._potential_params(critic_params)

        def terms(u: Tensor, action: Tensor, squash_grad: Tensor, grad_q: Tensor) -> Tensor:
            # grad_a of the smoothed norm sqrt(||v||^2 + delta^2) - delta.
            gap = action - prior_action
            grad_distance = gap / (gap.pow(2).sum(-1, keepdim=True) + smoothing_sq).sqrt()
            return squash_grad * (grad_q * inv_beta - grad_distance)

        return self._squashed_potential_grad(
            tensordict, critic_params, terms, dtype=prior_action.dtype, create_graph=create_graph
        )

    def sample(
        self,
        tensordict: TensorDictBase,
        *,
        create_graph: bool = False,
        critic_params: TensorDictBase | None = None,
    ) -> LangevinSample:
        """Runs policy, prior and flow on ``tensordict`` without writing into it (no noise).

        This is what losses call: with ``create_graph=True`` the returned tensors are
        differentiable w.r.t. the policy ``theta`` (through ``u0`` and every layer) and the
        flow's parameters ``h``.

        Keyword Args:
            create_graph: keep the autograd graph through the flow.
            critic_params: parameters for ``Q`` in the potential (default: the bound ones).
                Losses pass detached parameters so that the policy term never reaches the critic.
        """
        plain, base_key = self._plain_policy, self.base_key
        u0 = deterministic_policy_output(self.policy, tensordict, base_key, plain)
        self._check_action_dim(u0, "the policy's output before its TanhModule")
        low, high = self.action_low.to(u0.dtype), self.action_high.to(u0.dtype)
        prior_u = deterministic_policy_output(self.prior, tensordict, base_key, plain)
        prior_action = squash(prior_u, low, high)
        state = tensordict.get(self.state_key) if self.state_key is not None else None
        potential = self.potential_fn(tensordict, prior_action, critic_params)
        potential_grad = self.potential_grad_fn(
            tensordict, prior_action, critic_params, create_graph=create_graph
        )
        out = self.flow(
            u0,
            potential,
            state=state,
            create_graph=create_graph,
            potential_grad_fn=potential_grad,
        )
        self._warn_divergent(out.divergent, "Langevin flow")
        return LangevinSample(
            action=squash(out.position, low, high),
            u0=u0,
            uK=out.position,
            prior_action=prior_action,
            divergent=out.divergent,
        )

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._check_inputs(tensordict)
        mode = interaction_type()
        with torch.no_grad():
            out = self.sample(tensordict)
            action = out.action
            if mode is None or mode == InteractionType.RANDOM:
                low, high = self.action_low.to(action.dtype), self.action_high.to(action.dtype)
                action = add_action_noise(action, low, high, self.exploration_noise)
        tensordict.set(self.action_key, action)
        tensordict.set(self.flow_keys["u0"], out.u0)
        tensordict.set(self.flow_keys["uK"], out.uK)
        tensordict.set(self.flow_keys["divergent"], out.divergent)
        return tensordict
