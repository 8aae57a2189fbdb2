"""``BestOfNSACLoss``: TorchRL's SAC whose TD target's next action is the best of ``N`` samples.

The control of the chain (a gain counts only against it): the same critic evaluations per
action as an HMC chain of ``K = N - 1`` steps, spent on selection instead of dynamics.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import dispatch
from torch import Tensor
from torchrl.objectives import SACLoss

from torchrl_mcmc.mcmc.settings import check_integer, check_positive_float
from torchrl_mcmc.modules.best_of_n import BestOfNActor
from torchrl_mcmc.objectives.common import check_finite_batch, check_target_entropy

__all__ = ["BestOfNSACLoss"]


class BestOfNSACLoss(SACLoss):
    """SAC (v2, TorchRL's :class:`~torchrl.objectives.SACLoss`) for a :class:`BestOfNActor`.

    The policy, temperature and critic losses are SAC's, with one change in the critic's
    target: the next action is the best of the actor's ``num_samples`` samples on ``s'`` by the
    trained critics' minimum (as the actor acts), and the target is
    ``min_i Q'_i(s', a*) - alpha * log pi(a*|s')``. The loss binds its trained critics to the
    actor, so that collection selects with the critics trained here. As the package's other
    losses, :meth:`forward` raises a ``ValueError`` on a batch with non-finite values
    (observation, action, reward, next observation), naming the key, before computing anything.

    Args:
        actor: the :class:`~torchrl_mcmc.modules.best_of_n.BestOfNActor` to train.

    Keyword Args:
        **kwargs: :class:`~torchrl.objectives.SACLoss`'s keyword arguments (``num_qvalue_nets``
            must stay 2 or more for a minimum; ``delay_actor`` is not supported).
            ``alpha_init``, ``target_entropy`` and ``num_qvalue_nets`` are checked as
            :class:`~torchrl_mcmc.HMCLoss` checks them.

    Raises:
        TypeError: ``actor`` is no :class:`BestOfNActor`; ``alpha_init``, ``target_entropy``
            or ``num_qvalue_nets`` is no number (a ``bool`` included).
        ValueError: ``delay_actor=True``; ``alpha_init`` not finite, not ``> 0``, or ``0``/
            ``inf`` (or of infinite reciprocal) in ``float32``; ``target_entropy`` not finite
            (nor ``"auto"``); ``num_qvalue_nets < 1``. Each named with its value.

    Warns:
        UserWarning: ``actor`` was trained by another loss already: it now acts with this
            loss's critics, and the earlier loss's no longer act.

    :meth:`forward` raises a ``KeyError`` naming the entries a batch lacks (``("next",
    "terminated")`` may be absent: TorchRL's value estimator takes it from ``done``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torch import nn
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal
        >>> from torchrl.modules import ValueOperator
        >>> from torchrl_mcmc.modules import BestOfNActor
        >>> from torchrl_mcmc.objectives import BestOfNSACLoss
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> policy = ProbabilisticActor(
        ...     TensorDictModule(nn.Sequential(MLP(in_features=4, out_features=4, num_cells=[32]),
        ...                                    NormalParamExtractor()),
        ...                      in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], distribution_class=TanhNormal, spec=spec)
        >>> critic = ValueOperator(MLP(in_features=6, out_features=1, num_cells=[32]),
        ...                        in_keys=["observation", "action"])
        >>> actor = BestOfNActor(policy, critic, num_samples=6)
        >>> loss = BestOfNSACLoss(actor, action_spec=spec, delay_qvalue=True)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(16, 4), "action": torch.rand(16, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(16, 4), "reward": torch.randn(16, 1),
        ...              "done": torch.zeros(16, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(16, 1, dtype=torch.bool)}}, batch_size=[16])
        >>> out = loss(batch)
        >>> (out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]).backward()
        >>> actor.critic_params is loss.qvalue_network_params
        True
    """

    def __init__(self, actor: BestOfNActor, **kwargs: Any) -> None:
        if not isinstance(actor, BestOfNActor):
            raise TypeError(f"actor must be a BestOfNActor, got {type(actor).__name__}.")
        if kwargs.get("delay_actor"):
            raise ValueError("delay_actor=True is not supported: the actor acts with theta.")
        # SACLoss's own checks are missing (alpha_init=nan) or say nothing (alpha_init=-1:
        # "math domain error"); the rules are the HMCLoss's.
        if "alpha_init" in kwargs:
            check_positive_float("alpha_init", kwargs["alpha_init"], reciprocal=True)
        if "target_entropy" in kwargs:
            check_target_entropy(kwargs["target_entropy"])
        if "num_qvalue_nets" in kwargs:
            check_integer("num_qvalue_nets", kwargs["num_qvalue_nets"], 1)
        super().__init__(actor.policy, actor.critic, **{**kwargs, "delay_actor": False})
        self.best_of_n = actor
        actor.bind_critic_params(self.qvalue_network_params, owner=type(self).__name__)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """SAC's losses, after :func:`~torchrl_mcmc.objectives.common.check_finite_batch`."""
        # ("next", terminated) may be absent: the value estimator takes it from done.
        optional = [("next", self.tensor_keys.terminated)]
        check_finite_batch(type(self).__name__, tensordict, self.in_keys, optional=optional)
        return super().forward(tensordict)

    def _compute_target_v2(self, tensordict: TensorDictBase) -> Tensor:
        """The TD target with the best-of-``N`` next action."""
        tensordict = tensordict.clone(False)
        with torch.no_grad():
            next_td = tensordict.get("next").copy()
            # The actor reads the loss's own parameters (theta) and the trained critics.
            with self.actor_network_params.to_module(
                self.actor_network, preserve_module_state=False
            ):
                action, log_prob = self.best_of_n.select(next_td, explore=True)
            next_td.set(self.tensor_keys.action, action)
            values = self._vmap_qnetworkN0(next_td, self.target_qvalue_network_params)
            value = values.get(self.tensor_keys.state_action_value).squeeze(-1).min(0).values
            next_value = value - self._alpha * log_prob
            tensordict.set(
                ("next", self.value_estimator.tensor_keys.value), next_value.unsqueeze(-1)
            )
            return self.value_estimator.value_estimate(tensordict).squeeze(-1)
