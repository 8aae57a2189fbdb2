"""What :class:`~torchrl_mcmc.HMCLoss` and :class:`~torchrl_mcmc.LangevinFlowLoss` share.

Both train an MCMC-refined actor against twin critics with a KL-like term weighted by ``beta``:
the arguments they share, the tensordict keys, the value-estimator plumbing, ``beta`` (the
actor's buffer, so acting and training read one tensor), the parameter groups, the critics'
evaluation and TD regression, and the assembly of :meth:`~MCMCPolicyLoss.forward` are the same,
and live here once.

**Non-finite values** (one policy for every loss of the package, and for its actors):

* in the batch (observation, action, reward, next observation): a ``ValueError`` naming the
  key and the number of bad rows, before anything is computed (:func:`check_finite_batch`).
  The data is at fault, the environment or the replay buffer, and no loss could mend it.
* in a chain (a non-finite critic value or gradient along it, or at its end): that sample is
  divergent. It counts in ``num_divergent``, acts with its fallback and is left out of the
  objective.
* in the diagnostics: averaged over the samples whose chain did not diverge; when every chain
  of the batch diverged, the chain's diagnostics are left out of the output (``num_divergent``
  says why). A NaN would poison every running mean and the PID's distance, and a 0 would be a
  measurement nobody made, which the PID and the temperature would act on.
* in the parameters (a critic blown up to inf, say): the losses are returned as they are
  (``loss_qvalue`` inf or NaN) and left to the training loop, which must skip that step (the
  recipes' loop does) and the priority update with it (``td_error`` is as large there).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import ValueEstimators, dispatch_value_estimator, distance_loss

from torchrl_mcmc.mcmc.settings import check_integer, check_number
from torchrl_mcmc.modules.common import MCMCActorBase, floating_entries, non_finite_rows
from torchrl_mcmc.modules.hmc_actor import HMCSample
from torchrl_mcmc.modules.langevin_actor import LangevinSample

__all__ = ["Chains", "MCMCPolicyLoss", "check_finite_batch", "check_target_entropy"]

logger = logging.getLogger(__name__)

SampleT = TypeVar("SampleT", HMCSample, LangevinSample)


def batch_mean(values: Tensor) -> Tensor:
    """``values.mean()``, or, for an empty batch (every chain diverged and was dropped), ``0``
    with the graph of the empty computation, where the mean would be NaN: such a loss
    backpropagates zero gradients to the parameters it would have reached."""
    return values.mean() if values.numel() else values.sum()


def parameters_of(params: TensorDictParams) -> Iterator[nn.Parameter]:
    """The trainable entries of functional parameters (not buffers such as tanh bounds)."""
    return iter([p for p in params.values(True, True) if isinstance(p, nn.Parameter)])


def check_finite_batch(
    loss: str,
    tensordict: TensorDictBase,
    keys: Iterable[NestedKey],
    *,
    optional: Iterable[NestedKey] = (),
) -> None:
    """Raises a ``KeyError`` naming the entries ``keys`` the batch lacks, and a ``ValueError``
    if a floating-point one is not finite.

    The ``ValueError`` names each bad key with the number of rows (batch elements) holding a
    NaN or an inf. One synchronisation when everything is finite.

    Args:
        loss: the loss's name, for the message.
        tensordict: the batch.
        keys: the entries to check (non-floating ones, e.g. ``done``, are only required).

    Keyword Args:
        optional: the keys of ``keys`` the batch may lack: those the reader defaults, e.g.
            ``("next", "terminated")``, which TorchRL's value estimators take from ``done``.

    Raises:
        KeyError: naming the keys the batch lacks (``optional`` ones aside) and those it has.
        ValueError: naming the keys with a NaN or an inf, and the number of bad rows.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> batch = TensorDict({"observation": torch.zeros(4, 3)}, batch_size=[4])
        >>> check_finite_batch("MyLoss", batch, ["observation"])  # finite: nothing happens
        >>> batch["observation"][1:3, 0] = float("nan")
        >>> check_finite_batch("MyLoss", batch, ["observation"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: MyLoss: the batch holds NaN or inf in 'observation' (2 of 4 rows); the data...
        >>> check_finite_batch("MyLoss", batch, ["observation", ("next", "observation")])
        Traceback (most recent call last):
        ...
        KeyError: "MyLoss: the batch has no ('next', 'observation') entry; ...
    """
    entries = floating_entries(tensordict, keys, owner=loss, where="the batch", optional=optional)
    if not entries or bool(torch.stack([t.isfinite().all() for _, t in entries]).all()):
        return
    bad = non_finite_rows(entries, tensordict.batch_size.numel())
    raise ValueError(
        f"{loss}: the batch holds NaN or inf in {bad}; the data is at fault (the "
        "environment or the replay buffer), not the loss, which computed nothing."
    )


def check_target_entropy(target_entropy: Any) -> float | str:
    """``target_entropy`` if it is ``"auto"`` or a finite real number (a float then); an
    error naming it otherwise: a ``TypeError`` for a non-number (a ``bool`` included), a
    ``ValueError`` for another string, NaN or inf (which would make ``loss_alpha`` NaN or
    infinite).
    """
    message = (
        "target_entropy must be 'auto' (-action_dim) or a finite number, got "
        f"target_entropy={target_entropy!r}."
    )
    if isinstance(target_entropy, str):
        if target_entropy == "auto":
            return target_entropy
        raise ValueError(message)
    try:
        return check_number("target_entropy", target_entropy, positive=None)
    except (TypeError, ValueError) as err:
        raise type(err)(message) from None


class Chains(NamedTuple, Generic[SampleT]):
    """The chains a loss trains on: those of the batch that did not diverge.

    Attributes:
        sample: the actor's sample on :attr:`states` (none divergent; empty when every chain
            of the batch diverged), with its graph.
        states: the states of the batch whose chains are kept.
        num_divergent: how many states of the batch were dropped (a scalar tensor).
        value: ``Q(s, aK)`` of :attr:`sample`, the actor's scored value of the detached
            critics: differentiable w.r.t. the action, finite.
    """

    sample: SampleT
    states: TensorDictBase
    num_divergent: Tensor
    value: Tensor


class MCMCPolicyLoss(LossModule):
    """Base of the package's losses; subclasses convert their networks and define the losses.

    A subclass calls ``super().__init__(actor, ...)`` (which checks and stores the shared
    arguments), then ``convert_to_functional`` for ``"actor_network"`` (the base policy) and
    :meth:`_convert_critics` (the critics, bound to ``self.actor``). It defines
    ``actor_loss``, ``qvalue_loss`` and :meth:`flow_loss` (each returning ``(loss, metadata)``,
    each checking its batch with :meth:`_check_batch` first), ``_guarded_sample`` (the chains,
    with :meth:`_drop_divergent`), ``_DIAGNOSTICS`` (the detached diagnostics it may write)
    and ``PAPER_KWARGS``. Both chains, HMC and Langevin, are an actor's ``flow``; their
    parameters ``h`` are :meth:`flow_parameters` and their own loss is ``loss_flow``.

    The critic loss writes each sample's ``td_error`` (``max_j |Q_j(s, a) - target|``) into the
    input tensordict under the ``priority`` key, as TorchRL's ``SACLoss`` and ``TD3Loss`` do,
    so that ``buffer.update_tensordict_priority(batch)`` updates a
    :class:`~torchrl.data.TensorDictPrioritizedReplayBuffer`. It is written by
    :meth:`qvalue_loss` (which :meth:`forward` calls), so that a loop of delayed policy
    updates, calling :meth:`qvalue_loss` alone, gets it too.

    Args:
        actor: the actor to train (type-checked by the subclass).

    Keyword Args:
        num_qvalue_nets: number of critics (``>= 1``).
        loss_function: critic regression loss (``"l2"``, ``"smooth_l1"``, ``"l1"``).
        update_mode: ``"alternating"`` (eq. 11) or ``"joint"``.

    Raises:
        TypeError: ``num_qvalue_nets`` is no integer (a ``bool`` included).
        ValueError: ``num_qvalue_nets < 1``, or an unknown ``loss_function`` or
            ``update_mode``.

    Warns:
        UserWarning: the actor's critics were bound already, to an earlier loss's
            (:meth:`~torchrl_mcmc.modules.common.MCMCActorBase.bind_critic_params`): the actor
            now acts with this loss's.
    """

    actor_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    #: ``forward``'s detached diagnostics, after the losses (those the configuration has).
    _DIAGNOSTICS: tuple[str, ...]
    #: The keyword arguments of the paper's configuration, ``Loss(actor, **Loss.PAPER_KWARGS)``:
    #: what differs from the defaults, which are the recipes' (the recommended configuration).
    PAPER_KWARGS: ClassVar[Mapping[str, Any]]

    def __init__(
        self,
        actor: MCMCActorBase,
        *,
        num_qvalue_nets: int,
        loss_function: str,
        update_mode: str,
    ) -> None:
        num_qvalue_nets = check_integer("num_qvalue_nets", num_qvalue_nets, 1)
        if update_mode not in ("alternating", "joint"):
            raise ValueError(
                f"update_mode must be 'alternating' or 'joint', got update_mode={update_mode!r}."
            )
        if loss_function not in ("l2", "smooth_l1", "l1"):
            raise ValueError(
                f"loss_function must be 'l2', 'smooth_l1' or 'l1', got {loss_function!r}."
            )
        self._in_keys = None
        super().__init__()
        self.actor = actor
        #: ``"alternating"`` mode: whether :meth:`forward` computes the loss of ``h`` (a loop
        #: that updates ``h`` every n-th step only switches it off in between).
        self.compute_flow_loss = True
        self.num_qvalue_nets = num_qvalue_nets
        self.loss_function = loss_function
        self.update_mode = update_mode

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys the loss reads, renamable with :meth:`set_keys`.

        Attributes:
            action: the action taken in the environment. Defaults to the actor's.
            state_action_value: the critic's output key. Defaults to the critic's.
            value: where the next-state value is written for the value estimator.
            reward: reward key, under ``"next"``.
            done: done key, under ``"next"``.
            terminated: terminated key, under ``"next"``.
            priority: where the per-sample ``td_error`` is written in the input tensordict
                (a prioritized replay buffer's ``priority_key``). Defaults to ``"td_error"``.
        """

        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        value: NestedKey = "state_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority: NestedKey = "td_error"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (
        ValueEstimators.TD0,
        ValueEstimators.TD1,
        ValueEstimators.TDLambda,
    )

    # ------------------------------------------------------------------ critics
    def _convert_critics(self, num_qvalue_nets: int, *, create_target_params: bool) -> None:
        """Twin critics for ``self.actor``, handed back to it.

        ``num_qvalue_nets`` fresh copies of the actor's critic (plus Polyak targets for
        :class:`~torchrl.objectives.SoftUpdate`) are bound to the actor, so that collection uses
        exactly the parameters trained here (docs/method.md §1.1).
        """
        self.convert_to_functional(
            self.actor.critic,
            "qvalue_network",
            num_qvalue_nets,
            create_target_params=create_target_params,
        )
        self.actor.bind_critic_params(self.qvalue_network_params, owner=type(self).__name__)
        self._vmap_qvalue = torch.vmap(self._qvalue_with_params, (None, 0), randomness="different")
        self.set_keys(action=self.actor.action_key, state_action_value=self.actor.value_key)

    def _qvalue_with_params(self, td: TensorDictBase, params: TensorDictBase) -> Tensor:
        with params.to_module(self.qvalue_network):
            return self.qvalue_network(td.copy()).get(self.tensor_keys.state_action_value)

    def _qvalues(self, td: TensorDictBase, action: Tensor, params: TensorDictBase) -> Tensor:
        """``[num_qvalue_nets, *batch]`` values of ``action`` at the states of ``td``."""
        if self.actor.has_fast_critic:
            # The actor's batched-matmul evaluation of the same critic (critic_values).
            return self.actor.critic_values(td, action, params)
        td = td.select(*self.qvalue_network.in_keys, strict=False)
        td.set(self.tensor_keys.action, action)
        return self._vmap_qvalue(td, params).squeeze(-1)

    def _critic_td_loss(
        self, tensordict: TensorDictBase, next_value: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Twin-critic regression on the value estimator's target, given ``V(s')``; writes
        each sample's ``td_error`` into ``tensordict`` (the ``priority`` key).

        Args:
            tensordict: the batch.
            next_value: ``[*batch]`` value of the next states (target critics, no graph).
        """
        target_td = tensordict.select(*self.in_keys, strict=False).copy()
        target_td.set(("next", self.tensor_keys.value), next_value.unsqueeze(-1))
        target = self.value_estimator.value_estimate(target_td).squeeze(-1).detach()
        action = tensordict.get(self.tensor_keys.action)
        pred = self._qvalues(tensordict, action, self.qvalue_network_params)
        loss = distance_loss(pred, target.expand_as(pred), loss_function=self.loss_function)
        td_error = (pred - target).abs().max(0).values.detach()
        tensordict.set(self.tensor_keys.priority, td_error)
        return loss.sum(0).mean(), {"td_error": td_error}

    # ------------------------------------------------------------------ non-finite values
    def _check_batch(self, tensordict: TensorDictBase, keys: Iterable[NestedKey]) -> None:
        """:func:`check_finite_batch` on the entries ``keys`` of the batch: each required but
        ``("next", terminated)``, which the value estimator takes from ``done`` when absent."""
        optional = [("next", self.tensor_keys.terminated)]
        check_finite_batch(type(self).__name__, tensordict, keys, optional=optional)

    def _drop_divergent(self, sample: SampleT, value: Tensor) -> Tensor | None:
        """Which chains to drop: those the actor flagged divergent, and those whose end value
        ``Q(s, aK)`` is not finite (a critic that returns NaN or inf there; the actor never
        evaluates ``Q`` at the end of a Langevin flow). ``None`` when there are none: the one
        synchronisation of a batch without divergence. Logs the chains the loss adds."""
        drop = sample.divergent | ~value.isfinite()
        if not drop.any():
            return None
        added = int((drop & ~sample.divergent).sum())
        if added:
            logger.warning(
                "%s: the critic's value Q(s, aK) is not finite for %d of %d states; their "
                "chains count as divergent.",
                type(self).__name__,
                added,
                drop.numel(),
            )
        return drop

    def _chains(
        self, tensordict: TensorDictBase, states: TensorDictBase, sample: SampleT, value: Tensor
    ) -> Chains[SampleT]:
        """The :class:`Chains` kept from ``tensordict``'s: ``sample`` on ``states``."""
        dropped = tensordict.batch_size.numel() - states.batch_size.numel()
        return Chains(sample, states, torch.tensor(dropped, device=value.device), value)

    # ------------------------------------------------------------------ the losses
    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of ``theta`` (and of ``h`` too in ``"joint"`` mode), with diagnostics."""
        raise NotImplementedError

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """The critics' TD loss, with ``td_error`` per state."""
        raise NotImplementedError

    def flow_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``-J`` for ``h`` alone (``theta`` frozen): the ``"alternating"`` mode's second loss."""
        raise NotImplementedError

    @property
    def out_keys(self) -> list[str]:
        """Every key :meth:`forward` may write: the losses, then the diagnostics (the chain's
        are left out of a batch whose chains all diverged)."""
        keys = ["loss_actor", "loss_qvalue"]
        if self.update_mode == "alternating":
            keys.insert(1, "loss_flow")
        return [*keys, *self._DIAGNOSTICS]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """All losses at the current parameters, and the detached diagnostics; writes the
        per-sample ``td_error`` into ``tensordict``."""
        loss_qvalue, q_meta = self.qvalue_loss(tensordict)
        loss_actor, metadata = self.actor_loss(tensordict)
        out = {"loss_actor": loss_actor, "loss_qvalue": loss_qvalue}
        if self.update_mode == "alternating" and self.compute_flow_loss:
            out["loss_flow"], _ = self.flow_loss(tensordict)
        out.update(self._multiplier())
        out.update(metadata)
        out["td_error"] = q_meta["td_error"].mean()
        return TensorDict(out, batch_size=[])

    def _multiplier(self) -> dict[str, Tensor]:
        """:meth:`forward`'s entry for the multiplier of the regulariser: ``beta``."""
        return {"beta": self.beta.detach().clone()}

    # ------------------------------------------------------------------ beta
    @property
    def tunes_alpha(self) -> bool:
        """Whether ``beta`` is a tuned temperature (then it cannot be set from outside)."""
        return False

    @property
    def beta(self) -> Tensor:
        """The multiplier of the KL-like term (the actor's buffer, shared, written in place)."""
        return self.actor.beta

    @beta.setter
    def beta(self, value: float | Tensor) -> None:
        """Writes ``value`` into the actor's ``beta``, in place.

        Raises:
            ValueError: ``value`` is no finite scalar ``> 0`` whose reciprocal is finite in the
                buffer's dtype, or ``beta`` is the tuned temperature (:attr:`tunes_alpha`).
        """
        if self.tunes_alpha:
            name = type(self).__name__
            raise ValueError(
                f"{name}: beta cannot be set (got beta={value!r}): with the actor's "
                "prior='uniform' beta is SAC's temperature alpha, tuned to target_entropy and "
                "written into the actor at every call, which would overwrite it. Set its start "
                f"with {name}(actor, alpha_init=...), or use the paper's prior to set beta from "
                f"outside: {type(self.actor).__name__}(policy, critic, "
                f"**{type(self.actor).__name__}.PAPER_KWARGS) and "
                f"{name}(actor, **{name}.PAPER_KWARGS)."
            )
        value = torch.as_tensor(value, dtype=self.actor.beta.dtype)
        if value.numel() != 1 or not torch.isfinite(value) or value <= 0:
            raise ValueError(f"beta must be a finite scalar > 0, got {value}.")
        if not value.reciprocal().isfinite():  # Q / beta enters the chain's potential
            raise ValueError(
                f"beta={value.item()!r} is too small: 1 / beta overflows {value.dtype}."
            )
        self.actor.beta.copy_(value.reshape(()))

    # ------------------------------------------------------------------ parameter groups
    def policy_parameters(self) -> Iterator[nn.Parameter]:
        """``theta``: the base policy's parameters (not its buffers)."""
        return parameters_of(self.actor_network_params)

    def flow_parameters(self) -> Iterator[nn.Parameter]:
        """``h``: the chain's step sizes and its gate (HMC) or coupling (Langevin) networks."""
        return self.actor.flow.parameters()

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        """The trained critics (not their targets)."""
        return parameters_of(self.qvalue_network_params)

    def refresh_prior(self) -> None:
        """Copies ``theta`` into the frozen prior ``theta_t``; once per policy iteration."""
        self.actor.refresh_prior()

    # ------------------------------------------------------------------ TorchRL plumbing
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value=self.tensor_keys.value,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )
        self._set_in_keys()

    def make_value_estimator(self, value_type: ValueEstimators = None, **hyperparams) -> None:
        value_type, hp = self._prepare_value_estimator_kwargs(value_type, **hyperparams)
        if value_type is None:
            return
        dispatch_value_estimator(
            self,
            value_type,
            supported=self.SUPPORTED_VALUE_ESTIMATORS,
            tensor_keys={
                "value_target": "value_target",
                "value": self.tensor_keys.value,
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            value_network=None,
            **hp,
        )

    def _set_in_keys(self) -> None:
        state_keys = list(self.actor.in_keys)
        keys = [
            self.tensor_keys.action,
            *state_keys,
            *[("next", k) for k in state_keys],
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
        ]
        self._in_keys = list(dict.fromkeys(unravel_key(k) for k in keys))

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values) -> None:
        self._in_keys = values
