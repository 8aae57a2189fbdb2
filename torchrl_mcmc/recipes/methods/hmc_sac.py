"""HMC-SAC: a SAC-style agent whose actor is refined by Hamiltonian dynamics (paper §3.2)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from torchrl.envs import EnvBase

from torchrl_mcmc import HMCActor, HMCLoss
from torchrl_mcmc.recipes.factories import make_critic, make_stochastic_policy
from torchrl_mcmc.recipes.methods.base import LossMethod


class HMCSAC(LossMethod):
    """HMCActor + HMCLoss, one update per call; beta PID-controlled (the paper's prior) or
    SAC's tuned temperature (``hmc.prior=uniform``).

    Args:
        cfg: the ``hmc_sac`` recipe's configuration (``hmc.*``, ``pid.*``, ``optim.*``...).
        env: an environment of the task, for its specs.
        device: where the networks live.
    """

    pid_controlled = True

    def __init__(self, cfg: DictConfig, env: EnvBase, device: torch.device) -> None:
        self.actor = HMCActor(
            make_stochastic_policy(cfg, env),
            make_critic(cfg, env),
            action_spec=env.action_spec,
            num_steps=cfg.hmc.num_steps,
            step_size=cfg.hmc.step_size,
            gated=cfg.hmc.gated,
            gate_hidden=cfg.hmc.gate_hidden,
            gate_state_key="observation" if cfg.hmc.gate_state else None,
            gate_state_dim=env.observation_spec["observation"].shape[-1],
            beta=cfg.pid.beta_init,
            prior=cfg.hmc.prior,
            potential_critic=cfg.hmc.potential_critic,
            pessimism=cfg.hmc.pessimism,
        ).to(device)
        loss = HMCLoss(
            self.actor,
            loss_function=cfg.optim.loss_function,
            update_mode=cfg.hmc.update_mode,
            value_entropy=cfg.hmc.value_entropy,
            next_action=cfg.hmc.next_action,
            target_entropy=cfg.hmc.target_entropy,
            alpha_init=cfg.hmc.alpha_init,
        ).to(device)
        optimizers = {
            "policy": torch.optim.Adam(loss.policy_parameters(), lr=cfg.optim.lr),
            "flow": torch.optim.Adam(loss.flow_parameters(), lr=cfg.hmc.lr),
            "critic": torch.optim.Adam(loss.critic_parameters(), lr=cfg.optim.lr),
        }
        if loss.tunes_alpha:
            optimizers["alpha"] = torch.optim.Adam(loss.alpha_parameters(), lr=cfg.optim.lr)
        super().__init__(cfg, loss, policy=self.actor, optimizers=optimizers)
        if loss.tunes_alpha:
            self.pid = None  # SAC's temperature tuning drives beta, not the controller
        self.h_update_interval: int = cfg.hmc.h_update_interval
        self.updates = 0

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        # Alternating mode with h_update_interval = n: the h chain runs every n-th update only.
        self.loss.compute_flow_loss = self.updates % self.h_update_interval == 0
        self.updates += 1
        out = self.loss(batch)
        total = out["loss_actor"] + out["loss_qvalue"]
        for extra in ("loss_flow", "loss_alpha"):
            if extra in out:
                total = total + out[extra]
        self._step(total)
        self.target_updater.step()
        return self._count_update({k: v.item() for k, v in out.items()})
