"""``HMCActor``: a TorchRL stochastic actor whose action is refined by Hamiltonian dynamics.

Paper §3.2, §4.2, Algorithms 1–2; docs/method.md §1.1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from tensordict import TensorDictBase
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModuleBase,
)
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torch import distributions as D
from torchrl.data import Bounded, Composite, TensorSpec
from torchrl.modules.distributions import IndependentNormal, TanhNormal

from torchrl_mcmc.mcmc.gaussian import normal_log_prob, squash, squash_log_det
from torchrl_mcmc.mcmc.hamiltonian import HamiltonianFlow
from torchrl_mcmc.mcmc.settings import check_integer, check_positive_float
from torchrl_mcmc.modules._fast_paths import plain_policy, policy_dist
from torchrl_mcmc.modules.common import MCMCActorBase, PotentialCritic, unique_keys

__all__ = ["SCALE_LB", "HMCActor", "HMCSample"]

_GAUSSIAN_CLASSES = (TanhNormal, IndependentNormal, D.Normal)

Prior = Literal["policy", "uniform"]

#: The floor of the policy's (and the prior's) standard deviation in the unsquashed space, the
#: ``scale_lb`` default of TorchRL's :class:`~torchrl.modules.NormalParamExtractor`. A policy
#: built with it never goes below; any other is raised to it, in every density the actor and
#: its loss compute: a scale of 0 would make ``u0_log_prob`` NaN and the prior's precision
#: infinite. The floor is a clamp, in the compiled graph, rather than an error: a collapsing
#: policy's scale underflowing to 0 is a numerical event of training, not a user's mistake.
SCALE_LB = 1e-4


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
        scale: ``pi_theta``'s standard deviation in the unsquashed space (at least
            :data:`SCALE_LB`).
        prior_loc: the frozen prior ``pi_theta_t``'s mean (``None`` with the uniform prior).
        prior_scale: the frozen prior's standard deviation (at least :data:`SCALE_LB`;
            ``None`` with the uniform prior).
        divergent: ``True`` where the chain diverged (a non-finite end, or an energy error
            past the flow's ``divergence_threshold``) and fell back to ``(u0, rho0)``.
    """

    action: Tensor
    u0: Tensor
    rho0: Tensor
    uK: Tensor
    rhoK: Tensor
    log_prob: Tensor
    loc: Tensor
    scale: Tensor
    prior_loc: Tensor | None
    prior_scale: Tensor | None
    divergent: Tensor


def _gaussian_params(dist: D.Distribution) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of a policy distribution in the unsquashed space, the
    standard deviation floored at :data:`SCALE_LB`."""
    base = dist.base_dist if isinstance(dist, TanhNormal) else dist
    return base.mean, base.stddev.clamp_min(SCALE_LB)


def _probabilistic_module(
    policy: ProbabilisticTensorDictSequential,
) -> ProbabilisticTensorDictModule:
    found = [m for m in policy.modules() if isinstance(m, ProbabilisticTensorDictModule)]
    if not found:
        raise TypeError("policy has no ProbabilisticTensorDictModule: it cannot sample actions.")
    return found[-1]


class HMCActor(MCMCActorBase):
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

    **Defaults and the paper's configuration.** The defaults are the recipes' (the
    recommended configuration, ``examples/hmc_sac.py``): the uniform prior, SAC's
    maximum-entropy target with ``beta`` as its temperature (tuned by
    :class:`~torchrl_mcmc.HMCLoss`), and the first critic alone in the potential. The paper's
    configuration is :attr:`PAPER_KWARGS` away, ``HMCActor(policy, critic,
    **HMCActor.PAPER_KWARGS)``: the previous policy as prior, the critics' minimum, and
    ``beta = 0.05`` to start (what ``variant=paper`` composes; docs/method.md §2).

    Acting follows TorchRL's interaction types: under ``RANDOM`` (what collectors set for
    exploration) ``u0`` and ``rho0`` are sampled; under ``DETERMINISTIC``/``MODE``/``MEAN`` the
    chain starts from the base mode ``u0 = loc`` with ``rho0 = 0`` and is fully deterministic.
    With no interaction type set, the wrapped policy's ``default_interaction_type`` decides.
    The chain switches autograd on for its own ``grad_u U`` evaluations, so it works inside a
    collector's :func:`torch.no_grad`; written outputs are detached.

    **Non-finite values** (docs/method.md, "Non-finite values"): an observation with a NaN or
    an inf raises a ``ValueError`` naming its key and rows, before anything is computed; a
    chain whose critic value or gradient is not finite at any step (or whose end or energy
    error is not finite) is divergent and falls back to ``(u0, rho0)``; the policy's scale is
    floored at :data:`SCALE_LB`.

    **Saved settings.** The state dict holds ``action_dim``, ``prior``, ``potential_critic``
    and ``pessimism`` (and the flow's ``num_steps``, ``gated``, ``gate_hidden`` and gate
    ``state_dim``): a state saved with others is refused on load, naming each.

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
        step_size: initial per-dimension step size ``> 0``. The default ``0.05`` is a small,
            safe start in the unsquashed space; the step sizes are learned.
        gated: use the gated gradient of eqs. 18–19 (``False``: plain leapfrog, eq. 13).
        gate_hidden: hidden width of the gate nets (paper: 8 or 16).
        gate_state_key: key of a flat state feature the gates read (``None``: gates ignore the
            state, the paper's default). Requires ``gate_state_dim``.
        gate_state_dim: width of ``gate_state_key``'s last dimension.
        beta: initial multiplier ``beta > 0`` of the prior term (a buffer that a PID controller,
            or the entropy tuning of :class:`~torchrl_mcmc.HMCLoss`, overwrites). With the
            uniform prior it is the temperature ``alpha``, and ``HMCLoss`` starts it at its
            ``alpha_init`` (``1.0``, as this default); the paper's start is ``0.05``.
        prior: the chain's prior. ``"uniform"`` (the default): uniform over the action box,
            i.e. SAC's maximum-entropy target ``exp(Q / alpha)`` with ``beta`` as the
            temperature ``alpha``: in ``u`` it is the squash's log-determinant,
            ``U(u) = -(Q / beta + log|det da/du|(u))``. ``"policy"`` (the paper's): the frozen
            previous policy ``pi_theta_t``, ``U(u) = -(Q / beta + log pi_theta_t(u|s))``.
        potential_critic: which critics ``Q`` in the potential reads. ``"mean_std"`` (the
            default): ``mean - pessimism * std`` over the critics, a lower confidence bound
            against the chain climbing into actions the critics overrate (with twin critics,
            ``pessimism=1`` is their minimum); it also sets the ``Q`` that
            :class:`~torchrl_mcmc.HMCLoss`'s objective scores (the minimum otherwise).
            ``"min"`` (the paper's): the minimum over the bound critics (as SAC's policy
            objective). ``"first"``: the first critic alone, one critic evaluation per step
            instead of one per critic (the cheapest).
        pessimism: ``k >= 0`` of ``potential_critic="mean_std"``; ``None`` (the default): 2
            there, 1 (unused) with the other critics, where it must stay 1.
        action_key: where the action is written; defaults to the policy's sample key.
        hmc_key: prefix of the chain's outputs (``(hmc_key, "u0")`` ...).
        flow: a prebuilt :class:`HamiltonianFlow` (then ``num_steps``, ``step_size``, ``gated``,
            ``gate_hidden`` and ``gate_state_dim`` are ignored, with a warning where set).

    Raises:
        TypeError: ``policy`` is no probabilistic TensorDict module, ``critic`` no
            ``TensorDictModuleBase``, or a number argument is not one (a ``bool`` included).
        ValueError: an argument out of range, named with its value: ``beta`` (finite, ``> 0``,
            with a finite non-zero ``float32`` value and reciprocal), ``step_size`` (a finite,
            normal ``float32``: ``1e-50`` is ``0`` there, ``1e40`` inf), ``num_steps``, the
            action spec, a critic that does not read the action or whose ``MLP`` has more
            than one output feature, an unknown option. At call time, a ``KeyError`` names the
            input entries (``in_keys``) missing, and a ``ValueError`` the non-finite ones.

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
        >>> actor.prior_kind, actor.potential_critic, actor.pessimism  # the recipes' defaults
        ('uniform', 'mean_std', 2.0)
        >>> paper = HMCActor(policy, critic, **HMCActor.PAPER_KWARGS)
        >>> paper.prior_kind, paper.potential_critic, paper.pessimism, round(paper.beta.item(), 2)
        ('policy', 'min', 1.0, 0.05)
    """

    PAPER_KWARGS: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"prior": "policy", "potential_critic": "min", "beta": 0.05}
    )

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
        prior: Prior = "uniform",
        potential_critic: PotentialCritic = "mean_std",
        pessimism: float | None = None,
        action_key: NestedKey | None = None,
        hmc_key: NestedKey = "hmc",
        flow: HamiltonianFlow | None = None,
    ) -> None:
        super().__init__()
        if prior not in ("policy", "uniform"):
            raise ValueError(f"prior must be 'policy' or 'uniform', got prior={prior!r}.")
        self._set_potential_critic(potential_critic, pessimism)
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
        self._check_critic(critic, action_key, "Pass action_key=... or build the critic on it.")
        action_spec = self._resolve_action_spec(policy, action_spec, action_key)
        # In the buffer's dtype: 1e-300 is 0 in float32, 1e39 inf, and Q / beta enters U.
        beta = check_positive_float("beta", beta, reciprocal=True)
        if flow is None and gate_state_key is not None and gate_state_dim is None:
            raise ValueError("gate_state_key was given without gate_state_dim (its width).")
        if gate_state_dim is not None:
            check_integer("gate_state_dim", gate_state_dim, 1)

        action_dim = action_spec.shape[-1]
        if flow is not None:
            self._warn_ignored(
                "the prebuilt flow's settings apply",
                num_steps=num_steps,
                step_size=step_size,
                gated=gated,
                gate_hidden=gate_hidden,
                gate_state_dim=gate_state_dim,
            )
        elif not gated:
            self._warn_ignored(
                "gated=False builds no gates",
                gate_hidden=gate_hidden,
                gate_state_key=gate_state_key,
                gate_state_dim=gate_state_dim,
            )
        elif gate_state_key is None:
            self._warn_ignored(
                "the gates read no state without gate_state_key", gate_state_dim=gate_state_dim
            )
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
        self._set_critic(critic, action_key)
        self.flow = flow
        self.action_dim = action_dim
        self.prior_kind = prior
        # The prior pi_theta_t: a frozen snapshot, refreshed explicitly, never trained.
        self.prior = copy.deepcopy(policy).requires_grad_(False)
        self.register_module("critic_params", None)
        self.register_buffer("beta", torch.tensor(float(beta)))
        self.register_buffer("action_low", action_spec.space.low.detach().clone().float())
        self.register_buffer("action_high", action_spec.space.high.detach().clone().float())

        self._plain_policy = plain_policy(policy)  # the prior is a copy: same structure
        self.gate_state_key = gate_state_key
        hmc_key = (hmc_key,) if isinstance(hmc_key, str) else tuple(hmc_key)
        self.hmc_keys = {
            name: (*hmc_key, name)
            for name in ("u0", "rho0", "uK", "rhoK", "u0_log_prob", "divergent")
        }
        extra = [gate_state_key] if gate_state_key is not None else []
        self.in_keys = unique_keys([*policy.in_keys, *self._critic_state_keys, *extra])
        self.out_keys = [action_key, *self.hmc_keys.values()]

    @staticmethod
    def _resolve_action_spec(
        policy: nn.Module, action_spec: TensorSpec | None, action_key: NestedKey
    ) -> Bounded:
        spec = getattr(policy, "spec", None)
        if isinstance(spec, Composite):
            own = spec[action_key] if action_key in spec.keys(True) else None
        else:
            own = spec if isinstance(spec, TensorSpec) else None
        action_spec = MCMCActorBase._check_box(
            own if action_spec is None else action_spec, "or give the policy a spec.", "HMC"
        )
        if own is not None and own.shape[-1:] != action_spec.shape[-1:]:
            raise ValueError(
                f"the action spec's dimension {action_spec.shape[-1]} is not that of the "
                f"policy's spec, {tuple(own.shape)}: build the policy for the action spec."
            )
        return action_spec

    def settings(self) -> dict[str, Any]:
        """``action_dim``, ``prior``, ``potential_critic`` and ``pessimism``: saved in the state
        dict and checked on load, with the flow's (:meth:`HamiltonianFlow.settings`)."""
        return {
            "action_dim": self.action_dim,
            "prior": self.prior_kind,
            "potential_critic": self.potential_critic,
            "pessimism": self.pessimism,
        }

    # ------------------------------------------------------------------ the chain
    def log_prior(self, u: Tensor, prior_loc: Tensor | None, prior_scale: Tensor | None) -> Tensor:
        """The chain's log-prior at ``u`` (up to a constant), shape ``[*batch]``.

        ``log pi_theta_t(u|s)`` for the ``"policy"`` prior; for the ``"uniform"`` prior (uniform
        over the action box) the squash's ``log|det da/du|(u)``, the density of a uniform
        action pulled back to ``u`` up to the box's log-volume.
        """
        if self.prior_kind == "uniform":
            return squash_log_det(u, self.action_low.to(u.dtype), self.action_high.to(u.dtype))
        return normal_log_prob(u, prior_loc, prior_scale)

    def potential_fn(
        self,
        tensordict: TensorDictBase,
        prior_loc: Tensor | None,
        prior_scale: Tensor | None,
        critic_params: TensorDictBase | None = None,
    ) -> Callable[[Tensor], Tensor]:
        """The potential ``U(u) = -(Q(s, squash(u)) / beta + log_prior(u))``.

        ``log_prior`` is :meth:`log_prior`: ``log pi_theta_t(u|s)`` (the ``"policy"`` prior), whose
        parameters depend on the state only and so are computed once per chain (``prior_loc``,
        ``prior_scale``), or ``log|det da/du|(u)`` (the ``"uniform"`` prior; ``prior_loc`` and
        ``prior_scale`` unused). ``Q`` reads the critics :attr:`potential_critic` names.
        """
        beta = self.beta

        def potential(u: Tensor) -> Tensor:
            action = squash(u, self.action_low.to(u.dtype), self.action_high.to(u.dtype))
            q = self.potential_value(tensordict, action, critic_params)
            return -(q / beta + self.log_prior(u, prior_loc, prior_scale))

        return potential

    def potential_grad_fn(
        self,
        tensordict: TensorDictBase,
        prior_loc: Tensor | None,
        prior_scale: Tensor | None,
        critic_params: TensorDictBase | None = None,
        *,
        create_graph: bool = False,
    ) -> Callable[[Tensor], Tensor]:
        """``grad_u U`` of :meth:`potential_fn`'s ``U``, as the chain's leapfrog steps need it.

        With ``a = squash(u) = low + (high - low) * (tanh(u) + 1) / 2``,

        .. code-block:: text

            grad_u U = -(high - low) / 2 * (1 - tanh(u)^2) * grad_a Q(s, a) / beta
                       + (u - prior_loc) / prior_scale^2        # "policy" prior
                       + 2 tanh(u)                              # "uniform" prior instead

        The squash and prior terms are written out and the critic's state inputs are read once
        per chain; only ``grad_a Q`` is left to compute (:meth:`_critic_action_grad`: in closed
        form for a ReLU ``MLP`` critic, by autograd for any other). With the loss's detached
        critics the closed form records no graph even with ``create_graph=True``, which is
        exact (``grad_a Q`` of a piecewise-linear critic has zero derivative w.r.t. the action)
        and spares training's backward ``K + 1`` second-order passes through the critics.

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
        inv_beta = 1.0 / self.beta  # per-chain constants
        critic_params = self._potential_params(critic_params)
        if self.prior_kind == "uniform":

            def terms(u: Tensor, action: Tensor, squash_grad: Tensor, grad_q: Tensor) -> Tensor:
                # -grad_u log|det da/du| = 2 tanh(u); squash_grad = half_range * (1 - tanh^2).
                return 2.0 * torch.tanh(u) - squash_grad * grad_q * inv_beta

            dtype = self.action_low.dtype
        else:
            prior_precision = prior_scale.pow(-2)

            def terms(u: Tensor, action: Tensor, squash_grad: Tensor, grad_q: Tensor) -> Tensor:
                return (u - prior_loc) * prior_precision - squash_grad * grad_q * inv_beta

            dtype = prior_loc.dtype
        return self._squashed_potential_grad(
            tensordict, critic_params, terms, dtype=dtype, create_graph=create_graph
        )

    def sample(
        self,
        tensordict: TensorDictBase,
        *,
        explore: bool = True,
        create_graph: bool = False,
        critic_params: TensorDictBase | None = None,
        noise: tuple[Tensor, Tensor] | None = None,
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
            noise: the standard normal draws ``(xi, rho0)``, each ``[*batch, d]``, to start
                from, ``u0 = loc + scale * xi``, instead of fresh ones (``explore`` only). A loss
                reruns the chains that did not diverge with them (the divergence guard).
        """
        plain = self._plain_policy
        loc, scale = _gaussian_params(policy_dist(self.policy, tensordict, plain))
        self._check_action_dim(loc, "the policy's action")
        prior_loc = prior_scale = None
        if self.prior_kind == "policy":
            prior_loc, prior_scale = _gaussian_params(policy_dist(self.prior, tensordict, plain))
        if explore:
            xi, rho0 = (torch.randn_like(loc), torch.randn_like(loc)) if noise is None else noise
            u0 = loc + scale * xi
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
        self._warn_divergent(out.divergent, "HMC chain")
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

    def base_sample(self, tensordict: TensorDictBase) -> HMCSample:
        """The base policy's sample without the chain (``K = 0``: ``uK = u0``, ``rhoK = rho0``),
        e.g. for a TD target that skips the chain. Same fields as :meth:`sample`; no graph."""
        with torch.no_grad():
            loc, scale = _gaussian_params(policy_dist(self.policy, tensordict, self._plain_policy))
            self._check_action_dim(loc, "the policy's action")
            u0 = loc + scale * torch.randn_like(loc)
            rho0 = torch.randn_like(loc)
            action = squash(u0, self.action_low.to(loc.dtype), self.action_high.to(loc.dtype))
            return HMCSample(
                action=action,
                u0=u0,
                rho0=rho0,
                uK=u0,
                rhoK=rho0,
                log_prob=normal_log_prob(u0, loc, scale),
                loc=loc,
                scale=scale,
                prior_loc=None,
                prior_scale=None,
                divergent=torch.zeros(loc.shape[:-1], dtype=torch.bool, device=loc.device),
            )

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._check_inputs(tensordict)
        with torch.no_grad():
            out = self.sample(tensordict, explore=self._explores())
        tensordict.set(self.action_key, out.action)
        keys = self.hmc_keys
        tensordict.set(keys["u0"], out.u0)
        tensordict.set(keys["rho0"], out.rho0)
        tensordict.set(keys["uK"], out.uK)
        tensordict.set(keys["rhoK"], out.rhoK)
        tensordict.set(keys["u0_log_prob"], out.log_prob)
        tensordict.set(keys["divergent"], out.divergent)
        return tensordict
