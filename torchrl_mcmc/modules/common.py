"""What the package's actors share: the critic they evaluate (and its fast path), the
hand-over of the critic a loss trains, the frozen prior snapshot, their saved settings and the
check of their inputs.

**Non-finite values** (one policy for the three actors, and for the package's losses):

* in the observations an actor is given (any floating-point entry of its ``in_keys``): a
  ``ValueError`` naming the key and the number of bad rows, once per call, before anything is
  computed (:func:`check_finite_inputs`). The environment (or a transform) produced them, and
  no action can be computed from them.
* in a chain (a critic value or gradient that is NaN or infinite at any step, or a non-finite
  end or energy error): that sample is divergent. It falls back to its start ``u0``, is flagged
  in the output's ``divergent`` entry, counted by the losses' ``num_divergent`` and logged.
  :class:`~torchrl_mcmc.BestOfNActor` never picks a candidate whose value is not finite.
* a policy scale below ``SCALE_LB`` (``1e-4``, TorchRL's ``NormalParamExtractor`` floor)
  is raised to it by :class:`~torchrl_mcmc.HMCActor`: a scale of 0 would make ``u0_log_prob``
  NaN.
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import InteractionType, TensorDictModuleBase
from tensordict.nn.probabilistic import interaction_type
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.data import Bounded, TensorSpec
from torchrl.modules import MLP

from torchrl_mcmc.mcmc.integrators import mark_non_finite
from torchrl_mcmc.mcmc.settings import SavedSettings, check_number, check_saved_settings
from torchrl_mcmc.modules._fast_paths import PiecewiseLinearCritic, mean_minus_std

__all__ = ["MCMCActorBase", "PotentialCritic", "check_finite_inputs"]

PotentialCritic = Literal["min", "first", "mean_std"]

#: ``pessimism`` of ``potential_critic="mean_std"`` when none is given: the twins' mean minus
#: twice their spread (their minimum minus half of it; docs/method.md §1.7).
DEFAULT_PESSIMISM = 2.0

#: Seconds between two divergence warnings of one actor (:meth:`MCMCActorBase._warn_divergent`).
DIVERGENCE_LOG_INTERVAL_S = 60.0


def check_finite_inputs(owner: str, tensordict: TensorDictBase, keys: Iterable[NestedKey]) -> None:
    """Raises a ``KeyError`` naming the entries ``keys`` that ``tensordict`` lacks, and a
    ``ValueError`` if a floating-point one holds a NaN or an inf, naming each bad key with its
    number of bad rows (batch elements).

    Every key is required: an actor reads all of its ``in_keys`` (its policy's, its critic's
    state keys, its gates' or flow's state), and a missing one would fail deep inside with no
    name (``linear(): argument 'input' must be Tensor, not NoneType``).

    One synchronisation when everything is finite. Under ``torch.compile`` the test is in the
    compiled graph and only the raise runs eagerly (a graph cannot raise on a tensor's value):
    the compiled actor splits once, there, before the chain's one graph.

    Args:
        owner: who checks, for the message (the actor's class name).
        tensordict: the actor's input.
        keys: the entries to check (non-floating ones are only required).

    Raises:
        KeyError: naming the keys ``tensordict`` lacks, and those it has.
        ValueError: naming the keys with a NaN or an inf, and the number of bad rows.

    Examples:
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"observation": torch.zeros(4, 3)}, batch_size=[4])
        >>> check_finite_inputs("MyActor", td, ["observation"])  # finite: nothing happens
        >>> td["observation"][1:3, 0] = float("nan")
        >>> check_finite_inputs("MyActor", td, ["observation"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: MyActor: the environment produced NaN or inf in 'observation' (2 of 4 rows)...
        >>> check_finite_inputs("MyActor", td, ["obs"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        KeyError: "MyActor: the input has no 'obs' entry...
    """
    entries = floating_entries(tensordict, keys, owner=owner, where="the input")
    if entries:
        finite = torch.stack([t.isfinite().all() for _, t in entries]).all()
        _raise_if_not_finite(owner, finite, entries, tensordict.batch_size.numel())


@torch.compiler.disable
def _raise_if_not_finite(
    owner: str, finite: Tensor, entries: list[tuple[NestedKey, Tensor]], rows: int
) -> None:
    """:func:`check_finite_inputs`' raise, eagerly: the test ``finite`` was computed in the
    graph (cheaper than a graph break that hands the tensordict over)."""
    if bool(finite):
        return
    raise ValueError(
        f"{owner}: the environment produced NaN or inf in {non_finite_rows(entries, rows)}; "
        "no action can be "
        "computed from them. Check the environment and its transforms."
    )


def floating_entries(
    tensordict: TensorDictBase,
    keys: Iterable[NestedKey],
    *,
    owner: str,
    where: str,
    optional: Iterable[NestedKey] = (),
) -> list[tuple[NestedKey, Tensor]]:
    """The floating-point entries ``keys`` of ``tensordict``, with their keys: what a
    finiteness check reads.

    A ``KeyError`` names every key of ``keys`` that ``tensordict`` lacks, but those of
    ``optional`` (entries the reader defaults, e.g. ``("next", "terminated")``, which TorchRL's
    value estimators take from ``done``): ``owner`` and ``where`` (``"the input"``, ``"the
    batch"``) are for its message.
    """
    keys = list(keys)
    entries = [(key, tensordict.get(key, None)) for key in keys]
    skip = {unravel_key(k) for k in optional}
    missing = [k for k, t in entries if t is None and unravel_key(k) not in skip]
    if missing:
        _raise_missing(owner, where, missing, keys, tensordict)
    return [(k, t) for k, t in entries if t is not None and t.is_floating_point()]


@torch.compiler.disable
def _raise_missing(
    owner: str,
    where: str,
    missing: list[NestedKey],
    keys: list[NestedKey],
    tensordict: TensorDictBase,
) -> None:
    """:func:`floating_entries`' ``KeyError``, eagerly."""
    names = ", ".join(repr(k) for k in missing)
    entry = "entry" if len(missing) == 1 else "entries"
    raise KeyError(
        f"{owner}: {where} has no {names} {entry}; it reads {keys} and has "
        f"{sorted(tensordict.keys(True, True), key=str)}. Rename the data's keys, or build the "
        "modules (or set_keys) on the keys the data has."
    )


def non_finite_rows(entries: list[tuple[NestedKey, Tensor]], rows: int) -> str:
    """``"'key' (n of N rows)"`` for each of ``entries`` (a key and its tensor of ``rows``
    rows) with a NaN or inf in ``n`` of its rows, comma-separated: what an error names."""
    bad = []
    for key, value in entries:
        count = int((~value.isfinite()).reshape(rows, -1).any(-1).sum())
        if count:
            bad.append(f"{key!r} ({count} of {rows} rows)")
    return ", ".join(bad)


def unique_keys(keys: Sequence[NestedKey]) -> list[NestedKey]:
    """``keys`` without repeats, in their first order (an actor's ``in_keys``)."""
    out: list[NestedKey] = []
    for key in keys:
        if key not in out:
            out.append(key)
    return out


class MCMCActorBase(SavedSettings, TensorDictModuleBase):
    """Base of the package's actors; subclasses set ``policy``, ``prior``, the critic, ``beta``
    and the action box (``action_low``, ``action_high`` buffers).

    A subclass checks its critic with :meth:`_check_critic` before building anything, and
    installs it with :meth:`_set_critic`. The critic is then evaluated through
    :meth:`critic_values`, and its action-gradient, what a chain needs at every step, through
    :meth:`_critic_action_grad` (inside the potential's gradient,
    :meth:`_squashed_potential_grad`): both take the closed-form fast path of
    :class:`~torchrl_mcmc.modules._fast_paths.PiecewiseLinearCritic` for the usual ReLU
    ``MLP`` critic and the critic's own TensorDict interface (with autograd) for any other.

    A subclass's ``forward`` starts with :meth:`_check_inputs`, and it defines
    :meth:`settings` (saved in its state dict and checked, with its chain's, before anything is
    loaded) and :attr:`PAPER_KWARGS`.
    """

    critic: TensorDictModuleBase
    critic_params: TensorDictParams | None
    action_key: NestedKey
    value_key: NestedKey

    #: The keyword arguments of the paper's configuration, ``Actor(policy, critic,
    #: **Actor.PAPER_KWARGS)``: what differs from the defaults, which are the recipes' (the
    #: recommended configuration).
    PAPER_KWARGS: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    # ------------------------------------------------------------------ construction
    def _warn_ignored(self, reason: str, **given: Any) -> None:
        """Warns that the constructor arguments ``given`` are ignored (``reason`` says why),
        those left at their defaults aside."""
        defaults = inspect.signature(type(self)).parameters
        ignored = [
            f"{name}={value!r}" for name, value in given.items() if value != defaults[name].default
        ]
        if ignored:
            warnings.warn(
                f"{type(self).__name__}: {', '.join(ignored)} ignored: {reason}.", stacklevel=3
            )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Refuses a state saved with other settings (this actor's and its chain's,
        :meth:`settings`) before anything is loaded, then restores the bound critic parameters
        (``critic_params.*``) too, loss or no loss.

        ``critic_params`` is registered as ``None`` until a loss binds its parameters, and
        ``nn.Module`` loads nothing into a ``None`` child, nor reports its keys as unexpected
        (the name is registered): a freshly built actor would silently act with its untrained
        critic module. So when the state dict carries critic parameters and none are bound, a
        container of the saved shape is bound first and the usual recursion fills it. Saved
        critic parameters that do not fit this actor's critic raise here, naming the key, even
        with ``strict=False``: acting with part of a critic is never what was saved.
        """
        check_saved_settings(self, state_dict, prefix)
        key_prefix = f"{prefix}critic_params."
        saved = {k[len(key_prefix) :]: v for k, v in state_dict.items() if k.startswith(key_prefix)}
        if saved:
            num_critics = self._check_saved_critic_params(saved, key_prefix)
            if self.critic_params is None:
                self.bind_critic_params(self._critic_params_like(num_critics))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------ acting
    def _check_inputs(self, tensordict: TensorDictBase) -> None:
        """:func:`check_finite_inputs` on the actor's ``in_keys``: what ``forward`` does first."""
        check_finite_inputs(type(self).__name__, tensordict, self.in_keys)

    def _check_action_dim(self, value: Tensor, what: str) -> None:
        """A ``ValueError`` naming both dimensions unless ``value``'s last one is the action
        spec's (a shape check: nothing for a compiled graph to branch on)."""
        if value.shape[-1] != self.action_dim:
            raise ValueError(
                f"{type(self).__name__}: {what} has dimension {value.shape[-1]}, but the action "
                f"spec's is {self.action_dim}; build the policy for the action spec."
            )

    @property
    def default_interaction_type(self) -> InteractionType:
        """The wrapped policy's default, used when no interaction type is set."""
        return self.policy.default_interaction_type

    def _explores(self) -> bool:
        """Whether acting samples (TorchRL's ``RANDOM`` interaction type, as collectors set for
        exploration) or is deterministic (``DETERMINISTIC``/``MODE``/``MEAN``); with none set,
        the wrapped policy's default decides."""
        mode = interaction_type()
        if mode is None:
            mode = self.default_interaction_type
        return mode == InteractionType.RANDOM

    # ------------------------------------------------------------------ the action box
    @staticmethod
    def _check_box(action_spec: TensorSpec | None, how_to_give: str, squasher: str) -> Bounded:
        """``action_spec`` if it is a box with finite bounds ``high > low``; a clear error if not.

        ``how_to_give`` ends the message for a missing spec; ``squasher`` names what squashes
        into the box.
        """
        if action_spec is None:
            raise ValueError(
                f"no action spec: pass action_spec=env.action_spec (a Bounded spec), {how_to_give}"
            )
        if not isinstance(action_spec, Bounded):
            raise ValueError(
                "action_spec must be a Bounded (Box) spec with finite bounds, got "
                f"{type(action_spec).__name__}: {squasher} squashes its end point into the box."
            )
        low, high = action_spec.space.low, action_spec.space.high
        if not (low.isfinite().all() and high.isfinite().all() and (high > low).all()):
            raise ValueError(
                f"action_spec bounds must be finite with high > low, got low={low}, high={high}."
            )
        return action_spec

    # ------------------------------------------------------------------ the critic
    @staticmethod
    def _check_critic(critic: TensorDictModuleBase, action_key: NestedKey, hint: str) -> None:
        """Fails fast unless ``critic`` is a TensorDict module that reads ``action_key`` and
        writes a value, of one feature where that can be seen without running it (a TorchRL
        ``MLP`` in a ``TensorDictModule``/``ValueOperator``, the usual critic).

        ``hint`` ends the error message: where the action key comes from, what to change.

        Raises:
            TypeError: ``critic`` is not a ``TensorDictModuleBase`` (a plain function or
                ``nn.Module``: wrap it in a ``ValueOperator``/``TensorDictModule``).
            ValueError: it does not read ``action_key``, writes nothing, or its ``MLP`` has
                more than one output feature.
        """
        if not isinstance(critic, TensorDictModuleBase):
            raise TypeError(
                "the critic must be a TensorDict module (e.g. torchrl's ValueOperator, or a "
                "TensorDictModule) reading the state and the action and writing one value, got "
                f"a {type(critic).__name__}; wrap it in a ValueOperator."
            )
        if action_key not in critic.in_keys:
            raise ValueError(
                f"the critic must read the action key {action_key!r}; its in_keys are "
                f"{critic.in_keys}. {hint}"
            )
        if len(critic.out_keys) < 1:
            raise ValueError("the critic writes no output key; it must write a state-action value.")
        net = getattr(critic, "module", None)
        if isinstance(net, MLP):
            out_features = net.out_features
            shape = (out_features,) if isinstance(out_features, int) else tuple(out_features)
            if shape != (1,):
                raise ValueError(
                    f"the critic's MLP has out_features={out_features!r}; a critic writes one "
                    "state-action value per state: build it with out_features=1."
                )

    def _set_critic(self, critic: TensorDictModuleBase, action_key: NestedKey) -> None:
        """Installs the critic (checked by :meth:`_check_critic`) and picks its evaluation path."""
        self.critic = critic
        self.action_key = action_key
        self.value_key = critic.out_keys[0]
        self._critic_state_keys = [k for k in critic.in_keys if k != action_key]
        # None for critics the fast path does not cover: they take the generic TensorDict path.
        self._fast_critic = PiecewiseLinearCritic.from_critic(critic)

    def _set_potential_critic(
        self, potential_critic: PotentialCritic, pessimism: float | None
    ) -> None:
        """Checks and sets which critics the potential reads, and how they are combined
        (``pessimism=None``: :data:`DEFAULT_PESSIMISM` with ``"mean_std"``, 1 otherwise)."""
        if potential_critic not in ("min", "first", "mean_std"):
            raise ValueError(
                "potential_critic must be 'min', 'first' or 'mean_std', got "
                f"potential_critic={potential_critic!r}."
            )
        if pessimism is None:
            pessimism = DEFAULT_PESSIMISM if potential_critic == "mean_std" else 1.0
        pessimism = check_number("pessimism", pessimism, positive=False)
        if potential_critic != "mean_std" and pessimism != 1.0:
            raise ValueError(
                f"pessimism={pessimism!r} is read only with potential_critic='mean_std', got "
                f"potential_critic={potential_critic!r}."
            )
        self.potential_critic = potential_critic
        self.pessimism = float(pessimism)

    def scored_value(self, values: Tensor) -> Tensor:
        """The value the actor trusts, from every critic's ``[num_critics, *batch]`` values:
        ``mean - pessimism * std`` with ``potential_critic="mean_std"``, the minimum otherwise
        (``"first"`` changes which critics the chain evaluates, not how an action is scored).

        What the potential ascends and what the loss's objective scores.
        """
        if self.potential_critic == "mean_std":
            return mean_minus_std(values, self.pessimism)
        return values.min(dim=0).values

    def _potential_params(self, critic_params: TensorDictBase | None) -> TensorDictBase | None:
        """The critics the potential reads: all of them, or the first (``potential_critic``)."""
        params = self.critic_params if critic_params is None else critic_params
        if self.potential_critic == "first" and params is not None and params.ndim == 1:
            return params[:1]
        return params

    def potential_value(
        self,
        tensordict: TensorDictBase,
        action: Tensor,
        critic_params: TensorDictBase | None = None,
    ) -> Tensor:
        """``Q(s, action)`` as the potential reads it (:attr:`potential_critic`), ``[*batch]``."""
        values = self.critic_values(tensordict, action, self._potential_params(critic_params))
        return self.scored_value(values)

    @property
    def has_fast_critic(self) -> bool:
        """Whether the critic takes the fast path of :meth:`critic_values` (a ReLU ``MLP``)."""
        return self._fast_critic is not None

    def bind_critic_params(self, params: TensorDictParams, *, owner: str | None = None) -> None:
        """Makes the actor evaluate ``Q`` with ``params`` (the ones a loss trains).

        Args:
            params: parameters of :attr:`critic` with a leading critic dimension, e.g.
                ``loss.qvalue_network_params`` of shape ``[num_qvalue_nets]``. The same object is
                kept (not a copy), so every optimiser step on it is seen by the next action, and
                being registered here it travels with the actor's ``state_dict`` and with the
                weights collectors send to their workers. ``load_state_dict`` restores them into
                a freshly built actor too, with no loss: a saved actor acts as it did.

        Keyword Args:
            owner: who binds them, for the warning below (a loss's class name).

        Raises:
            ValueError: ``params`` is no ``TensorDictParams`` with one leading dimension.

        Warns:
            UserWarning: when other parameters were bound already (a second loss built on the
                same actor, or a loss built on a loaded actor): the actor now acts with
                ``params``, and the earlier ones (the earlier loss's, which it still trains, or
                the loaded ones) no longer act. Rebuilding a loss (in a notebook) is legitimate;
                training two losses on one actor is not what it looks like.
        """
        if not isinstance(params, TensorDictParams) or params.ndim != 1:
            raise ValueError(
                "params must be a TensorDictParams with one leading critic dimension, got "
                f"{type(params).__name__} of shape {getattr(params, 'shape', None)}."
            )
        if self.critic_params is not None and self.critic_params is not params:
            new = f"the new {owner}'s critics" if owner else "the new critic parameters"
            warnings.warn(
                f"{type(self).__name__}: its critic parameters were bound already (to an earlier "
                f"loss's, or loaded); it now acts with {new}, and the earlier ones are no longer "
                "the ones acting: an earlier loss still trains its own critics, which this actor "
                "no longer uses. Build one loss per actor (a fresh actor for a second loss), or "
                "discard the earlier loss.",
                UserWarning,
                stacklevel=3,
            )
        self.critic_params = params

    def _check_saved_critic_params(self, saved: dict[str, Tensor], key_prefix: str) -> int:
        """How many critics ``saved`` stacks (entries named as in ``critic_params``' state dict).

        Raises a ``RuntimeError`` naming every key that does not fit: a missing or unknown entry,
        or a shape other than this actor's critic's with the leading critic dimension (that of
        the bound parameters, if any).
        """
        expected = TensorDict.from_module(self.critic).flatten_keys(".")
        expected_names = set(expected.keys())
        if self.critic_params is not None:
            num_critics = self.critic_params.shape[0]
        else:
            first = next(iter(saved.values()))
            num_critics = first.shape[0] if first.ndim > 0 else 0
        problems = [f"{key_prefix}{name} is missing" for name in expected_names - saved.keys()]
        problems += [
            f"{key_prefix}{name} is not an entry of the critic"
            for name in saved.keys() - expected_names
        ]
        for name in saved.keys() & expected_names:
            needed = (num_critics, *expected[name].shape)
            if tuple(saved[name].shape) != needed:
                problems.append(
                    f"{key_prefix}{name} has shape {tuple(saved[name].shape)}, the critic needs "
                    f"{needed}"
                )
        if problems:
            raise RuntimeError(
                f"the saved critic parameters do not fit this {type(self).__name__}'s critic: "
                f"{'; '.join(sorted(problems))}. Build the actor with the critic it was saved with."
            )
        return num_critics

    def _critic_params_like(self, num_critics: int) -> TensorDictParams:
        """``num_critics`` stacked copies of the critic module's parameters and buffers, laid out
        as a loss's ``qvalue_network_params``: what a saved state is loaded into."""
        own = TensorDict.from_module(self.critic)
        stacked = own.data.expand(num_critics).clone()
        for name, value in own.items(True, True):
            if isinstance(value, nn.Parameter):
                stacked.set(name, nn.Parameter(stacked.get(name)))
        return TensorDictParams(stacked, no_convert=True)

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
        """``action -> grad_a Q(s, action)`` at the states of ``tensordict``, ``Q`` the critics'
        :meth:`scored_value` (their minimum by default).

        Set up once per chain (or flow). ``create_graph`` keeps the gradient's graph (to the
        action and to parameters that require gradients) wherever it is not identically zero;
        without it the critic's parameters are detached, as acting needs ``grad_a Q`` only.
        Where ``Q`` itself is NaN or infinite the gradient is NaN
        (:func:`~torchrl_mcmc.mcmc.integrators.mark_non_finite`), whatever its derivative: the
        chain's step there is divergent, as one with a non-finite gradient.

        The usual critic, a ReLU ``MLP`` in a ``ValueOperator``/``TensorDictModule``, gets the
        gradient in closed form (:class:`PiecewiseLinearCritic`), and when its parameters need
        no gradient (acting, and the losses' detached critics) it records no graph even with
        ``create_graph=True``: ``Q`` is piecewise linear in the action, autograd itself
        differentiates ``grad_a Q`` w.r.t. the action to exact zeros (the backward of ReLU
        differentiates to ``zeros_like``), so a constant ``grad_a Q`` gives the same values and
        the same gradients, and training's backward skips one second-order pass through the
        critics per gradient evaluation. Any other critic gets it from autograd.
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
            # mean - k * std is piecewise linear in the critics' values for two critics
            # (std = |Q_1 - Q_2| / 2) but curved for more: then a graph needs autograd.
            curved = self.potential_critic == "mean_std" and layers[0][0].shape[0] > 2
            if constant_params and not (curved and create_graph):
                # Piecewise linear in the action: autograd's derivative of grad_a Q w.r.t. the
                # action is exactly zero, so with constant parameters the closed form is the
                # whole answer, create_graph or not.
                if self.potential_critic == "mean_std":
                    pessimism = self.pessimism

                    def closed_form(action: Tensor) -> Tensor:
                        value, grad = bound.mean_std_value_and_grad(action.detach(), pessimism)
                        return mark_non_finite(grad, value)

                else:

                    def closed_form(action: Tensor) -> Tensor:
                        value, grad = bound.min_value_and_grad(action.detach())
                        return mark_non_finite(grad, value)

                return closed_form

            def min_value(action: Tensor) -> Tensor:
                return self.scored_value(bound.values(action))

        else:
            states = tensordict.select(*self._critic_state_keys)

            def min_value(action: Tensor) -> Tensor:
                return self.scored_value(self._generic_critic_values(states, action, params))

        def by_autograd(action: Tensor) -> Tensor:
            with torch.enable_grad():
                if not (create_graph and action.requires_grad):
                    action = action.detach().requires_grad_(True)
                value = min_value(action)
                (grad,) = torch.autograd.grad(value.sum(), action, create_graph=create_graph)
            return mark_non_finite(grad, value)

        return by_autograd

    def _squashed_potential_grad(
        self,
        tensordict: TensorDictBase,
        critic_params: TensorDictBase | None,
        other_terms: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor],
        *,
        dtype: torch.dtype,
        create_graph: bool,
    ) -> Callable[[Tensor], Tensor]:
        """``u -> grad_u U(u)`` for a potential ``U`` of ``u`` through ``Q(s, squash(u))``.

        What both actors' ``potential_grad_fn`` share: the critic's gradient is set up once per
        chain (:meth:`_critic_action_grad`), and at each ``u`` the squash
        ``a = mid + half_range * tanh(u)``, its derivative ``half_range * (1 - tanh(u)^2)`` and
        ``grad_a Q(s, a)`` (the minimum over the critics) are computed under the grad mode
        ``create_graph`` asks for; ``other_terms(u, a, squash_grad, grad_q)`` assembles
        ``grad_u U`` from them.

        Args:
            tensordict: holds the critic's state keys.
            critic_params: as in :meth:`critic_value` (``None``: the bound ones).
            other_terms: ``(u, action, squash_grad, grad_q) -> grad_u U``.

        Keyword Args:
            dtype: the chain's dtype (of the action bounds used).
            create_graph: a graph to ``u`` and the parameters (training), or none (acting).
        """
        params = self.critic_params if critic_params is None else critic_params
        critic_grad = self._critic_action_grad(tensordict, params, create_graph=create_graph)
        low, high = self.action_low.to(dtype), self.action_high.to(dtype)
        # Per-chain constants: squash(u) = mid + half_range * tanh(u).
        half_range = 0.5 * (high - low)
        mid = low + half_range

        def grad(u: Tensor) -> Tensor:
            if not create_graph:
                u = u.detach()
            with torch.set_grad_enabled(create_graph):
                tanh_u = torch.tanh(u)
                action = mid + half_range * tanh_u
                squash_grad = (1.0 - tanh_u * tanh_u) * half_range
                return other_terms(u, action, squash_grad, critic_grad(action))

        return grad

    def _warn_divergent(self, divergent: Tensor, what: str) -> None:
        """Logs how many samples a chain lost to divergence (they fell back to ``u0``), on the
        logger of the actor's module: the first time at once, then at most once every
        :data:`DIVERGENCE_LOG_INTERVAL_S` seconds, with what was lost in between (a chain that
        diverges at every step would otherwise log a line per action and per update).

        Not inside ``torch.compile``: the test reads a tensor's value, which splits the compiled
        graph there and doubles the cost of a compiled action. The per-sample flags are still
        in the actor's output (its ``"divergent"`` key), and the losses count them.
        """
        if torch.compiler.is_compiling() or not divergent.any():
            return
        log = self.__dict__.setdefault("_divergence_log", {"at": None, "calls": 0, "lost": 0})
        lost = int(divergent.sum())
        log["calls"] += 1
        log["lost"] += lost
        now = time.monotonic()
        if log["at"] is not None and now - log["at"] < DIVERGENCE_LOG_INTERVAL_S:
            return
        latest = f"{lost} of {divergent.numel()}"
        logger = logging.getLogger(type(self).__module__)
        if log["at"] is None:
            logger.warning(
                "%s diverged for %s samples; they fall back to u0 (further divergences are "
                "logged at most every %.0f s).",
                what,
                latest,
                DIVERGENCE_LOG_INTERVAL_S,
            )
        else:
            logger.warning(
                "%s diverged in %d calls over the last %.0f s, for %d samples (%s in the "
                "latest); they fall back to u0.",
                what,
                log["calls"],
                now - log["at"],
                log["lost"],
                latest,
            )
        log.update(at=now, calls=0, lost=0)

    # ------------------------------------------------------------------ the prior
    @torch.no_grad()
    def refresh_prior(self) -> None:
        """Copies the policy's current parameters and buffers into the frozen prior ``theta_t``.

        Call once per policy iteration (one collector batch), not after every SGD step: with
        ``theta_t = theta`` the regulariser of objectives (10) and (17) measures the distance
        from the very policy being trained and stops holding it near the last one
        (docs/method.md §1.1).
        """
        for target, source in zip(self.prior.parameters(), self.policy.parameters(), strict=True):
            target.copy_(source)
        for target, source in zip(self.prior.buffers(), self.policy.buffers(), strict=True):
            target.copy_(source)
