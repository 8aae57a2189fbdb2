"""HMC-SAC: a SAC-style agent whose actor is refined by Hamiltonian dynamics (paper §3.2)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torchrl.envs import EnvBase

from torchrl_mcmc import HMCActor, HMCLoss
from torchrl_mcmc.recipes.factories import make_critic, make_stochastic_policy
from torchrl_mcmc.recipes.methods.base import LossMethod

logger = logging.getLogger(__name__)

#: The recipe's own configuration, for the defaults of its ``pid`` section.
_RECIPE = Path(__file__).resolve().parents[1] / "config" / "hmc_sac.yaml"


def hmc_actor_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """:class:`~torchrl_mcmc.HMCActor`'s keyword arguments from the configuration (those of the
    environment, the action spec and the gate's state width, aside)."""
    return {
        "num_steps": cfg.hmc.num_steps,
        "step_size": cfg.hmc.step_size,
        "gated": cfg.hmc.gated,
        "gate_hidden": cfg.hmc.gate_hidden,
        "gate_state_key": "observation" if cfg.hmc.gate_state else None,
        "prior": cfg.hmc.prior,
        "potential_critic": cfg.hmc.potential_critic,
        "pessimism": cfg.hmc.pessimism,
    }


def hmc_loss_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """:class:`~torchrl_mcmc.HMCLoss`'s keyword arguments from the configuration."""
    return {
        "loss_function": cfg.optim.loss_function,
        "update_mode": cfg.hmc.update_mode,
        "value_entropy": cfg.hmc.value_entropy,
        "next_action": cfg.hmc.next_action,
        "target_entropy": cfg.hmc.target_entropy,
        "alpha_init": cfg.hmc.alpha_init,
    }


class HMCSAC(LossMethod):
    """HMCActor + HMCLoss, one update per call; beta SAC's tuned temperature ``alpha`` (the
    default, ``hmc.prior=uniform``) or PID-controlled (the paper's prior, ``variant=paper``).

    With the uniform prior the ``pid`` section is not used: the temperature starts at
    ``hmc.alpha_init`` and is tuned to ``hmc.target_entropy``, and a ``pid.*`` value set away
    from the recipe's is reported as ignored. The iteration's scalar is then ``alpha`` (as
    :class:`~.sac.SAC` logs it), ``beta`` with the paper's prior.

    Args:
        cfg: the ``hmc_sac`` recipe's configuration (``hmc.*``, ``pid.*``, ``optim.*``...).
        env: an environment of the task, for its specs.
        device: where the networks live.
    """

    sections = frozenset({"hmc", "pid"})
    pid_controlled = True

    def __init__(self, cfg: DictConfig, env: EnvBase, device: torch.device) -> None:
        self.actor = HMCActor(
            make_stochastic_policy(cfg, env),
            make_critic(cfg, env),
            action_spec=env.action_spec,
            # The gates read the state only with hmc.gate_state (its width, then).
            gate_state_dim=(
                env.observation_spec["observation"].shape[-1] if cfg.hmc.gate_state else None
            ),
            **hmc_actor_kwargs(cfg),
        ).to(device)
        loss = HMCLoss(self.actor, **hmc_loss_kwargs(cfg)).to(device)
        if loss.tunes_alpha:
            _warn_unused_pid(cfg)
        else:
            loss.beta = cfg.pid.beta_init  # the controller's start, or beta for good
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
        if self._step(total):  # a skipped (non-finite) step moves no target either
            self.target_updater.step()
        return self._count_update({k: v.item() for k, v in out.items()})

    def end_iteration(self, metrics: list[dict[str, float]]) -> dict[str, float]:
        if self.loss.tunes_alpha:
            return {"alpha": math.exp(self.loss.log_alpha.item())}
        return super().end_iteration(metrics)


def _warn_unused_pid(cfg: DictConfig) -> None:
    """Warns of the ``pid.*`` values set away from the recipe's: the uniform prior has no use
    for them (the PID is not built, and the prior it refreshes is not read)."""
    defaults = OmegaConf.load(_RECIPE).pid
    changed = [f"pid.{key}={value}" for key, value in cfg.pid.items() if value != defaults[key]]
    if changed:
        logger.warning(
            "hmc.prior=uniform ignores %s: beta is SAC's temperature alpha there, started at "
            "hmc.alpha_init and tuned to hmc.target_entropy. hmc.prior=policy (variant=paper) "
            "uses the PID.",
            ", ".join(changed),
        )
