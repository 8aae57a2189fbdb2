"""What :class:`~torchrl_mcmc.HMCActor` and :class:`~torchrl_mcmc.LangevinFlowActor` share:
the hand-over of the critic a loss trains, and the frozen prior snapshot."""

from __future__ import annotations

import torch
from tensordict import TensorDictParams
from tensordict.nn import TensorDictModuleBase

__all__ = ["MCMCActorBase"]


class MCMCActorBase(TensorDictModuleBase):
    """Base of the package's actors; subclasses set ``policy``, ``prior``, ``critic``."""

    def bind_critic_params(self, params: TensorDictParams) -> None:
        """Makes the actor evaluate ``Q`` with ``params`` (the ones a loss trains).

        Args:
            params: parameters of :attr:`critic` with a leading critic dimension, e.g.
                ``loss.qvalue_network_params`` of shape ``[num_qvalue_nets]``. The same object is
                kept (not a copy), so every optimiser step on it is seen by the next action, and
                being registered here it travels with the actor's ``state_dict`` and with the
                weights collectors send to their workers.
        """
        if not isinstance(params, TensorDictParams) or params.ndim != 1:
            raise ValueError(
                "params must be a TensorDictParams with one leading critic dimension, got "
                f"{type(params).__name__} of shape {getattr(params, 'shape', None)}."
            )
        self.critic_params = params

    @torch.no_grad()
    def refresh_prior(self) -> None:
        """Copies the policy's current parameters and buffers into the frozen prior ``theta_t``.

        Call once per policy iteration (one collector batch), not after every SGD step: with
        ``theta_t = theta`` the regulariser of objectives (10) and (17) measures the distance
        from the very policy being trained and stops holding it near the last one (DESIGN §1.1).
        """
        for target, source in zip(self.prior.parameters(), self.policy.parameters(), strict=True):
            target.copy_(source)
        for target, source in zip(self.prior.buffers(), self.policy.buffers(), strict=True):
            target.copy_(source)
