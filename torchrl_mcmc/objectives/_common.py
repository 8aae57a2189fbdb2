"""What :class:`~torchrl_mcmc.HMCLoss` and :class:`~torchrl_mcmc.LangevinFlowLoss` share.

Both train an MCMC-refined actor against twin critics with a KL-like term weighted by ``beta``:
the tensordict keys, the value-estimator plumbing, ``beta`` (the actor's buffer, so acting and
training read one tensor) and the parameter groups are the same, and live here once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase, TensorDictParams
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import ValueEstimators, dispatch_value_estimator

__all__ = ["MCMCPolicyLoss"]


def parameters_of(params: TensorDictParams) -> Iterator[nn.Parameter]:
    """The trainable entries of functional parameters (not buffers such as tanh bounds)."""
    return iter([p for p in params.values(True, True) if isinstance(p, nn.Parameter)])


class MCMCPolicyLoss(LossModule):
    """Base of the package's losses; subclasses set ``self.actor`` and convert their networks.

    A subclass must call ``convert_to_functional`` for ``"actor_network"`` (the base policy)
    and ``"qvalue_network"`` (the critics) and bind the latter to ``self.actor``.
    """

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
        """

        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        value: NestedKey = "state_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

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
        exactly the parameters trained here (DESIGN §1.1).
        """
        self.convert_to_functional(
            self.actor.critic,
            "qvalue_network",
            num_qvalue_nets,
            create_target_params=create_target_params,
        )
        self.actor.bind_critic_params(self.qvalue_network_params)
        self._vmap_qvalue = torch.vmap(self._qvalue_with_params, (None, 0), randomness="different")
        self.set_keys(action=self.actor.action_key, state_action_value=self.actor.value_key)

    def _qvalue_with_params(self, td: TensorDictBase, params: TensorDictBase) -> Tensor:
        with params.to_module(self.qvalue_network):
            return self.qvalue_network(td.copy()).get(self.tensor_keys.state_action_value)

    # ------------------------------------------------------------------ beta
    @property
    def beta(self) -> Tensor:
        """The multiplier of the KL-like term (the actor's buffer, shared, written in place)."""
        return self.actor.beta

    @beta.setter
    def beta(self, value: float | Tensor) -> None:
        value = torch.as_tensor(value, dtype=self.actor.beta.dtype)
        if value.numel() != 1 or not torch.isfinite(value) or value <= 0:
            raise ValueError(f"beta must be a finite scalar > 0, got {value}.")
        self.actor.beta.copy_(value.reshape(()))

    # ------------------------------------------------------------------ parameter groups
    def policy_parameters(self) -> Iterator[nn.Parameter]:
        """``theta``: the base policy's parameters (not its buffers)."""
        return parameters_of(self.actor_network_params)

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
