"""HMC-SAC: a SAC-style agent whose actor is refined by Hamiltonian dynamics (paper §3.2).

    python examples/hmc_sac.py                      # Hopper-v4, paper-scale budget
    python examples/hmc_sac.py env=Ant-v4
    python examples/hmc_sac.py preset=quick         # Pendulum-v1, < 15 min on 2 CPU cores
    python examples/hmc_sac.py resume=runs/hmc_sac/Hopper-v4/seed0-20261124-101500

Everything but the method (environment, networks, collection, replay, evaluation, budget,
checkpoints) is shared with ``sac.py`` through ``utils.py`` and ``experiment.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torchrl.objectives import SoftUpdate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from any directory

from examples.experiment import run
from examples.utils import make_critic, make_stochastic_policy
from torchrl_mcmc import HMCActor, HMCLoss, PIDController


class HMCSAC:
    """HMCActor + HMCLoss + PID-controlled beta, one update per call."""

    def __init__(self, cfg: DictConfig, env, device: torch.device) -> None:
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
        ).to(device)
        self.loss = HMCLoss(
            self.actor,
            loss_function=cfg.optim.loss_function,
            update_mode=cfg.hmc.update_mode,
            target_entropy=cfg.hmc.target_entropy,
        ).to(device)
        self.loss.make_value_estimator(gamma=cfg.optim.gamma)
        self.target_updater = SoftUpdate(self.loss, eps=cfg.optim.polyak)
        self.optimizers = {
            "policy": torch.optim.Adam(self.loss.policy_parameters(), lr=cfg.optim.lr),
            "hmc": torch.optim.Adam(self.loss.hmc_parameters(), lr=cfg.hmc.lr),
            "critic": torch.optim.Adam(self.loss.critic_parameters(), lr=cfg.optim.lr),
        }
        gains = {k: v for k, v in cfg.pid.items() if k != "enabled"}
        self.pid = PIDController(**gains) if cfg.pid.enabled else None
        self.policy = self.actor
        self.replay_keys = self.loss.in_keys

    def begin_iteration(self) -> None:
        # theta_t <- theta once per policy iteration (DESIGN §1.1), never per SGD step.
        self.loss.refresh_prior()

    def update(self, batch) -> dict[str, float]:
        out = self.loss(batch)
        total = out["loss_actor"] + out["loss_qvalue"]
        if "loss_hmc" in out:
            total = total + out["loss_hmc"]
        for optim in self.optimizers.values():
            optim.zero_grad(set_to_none=True)
        total.backward()
        for optim in self.optimizers.values():
            optim.step()
        self.target_updater.step()
        return {k: v.item() for k, v in out.items()}

    def end_iteration(self, metrics: list[dict[str, float]]) -> dict[str, float]:
        if self.pid is None:
            return {}
        distance = sum(m["policy_distance"] for m in metrics) / len(metrics)
        self.loss.beta = self.pid.update(distance)
        return {"pid_distance": distance, "beta": self.pid.beta}

    def state_dict(self) -> dict:
        return {
            "loss": self.loss.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "pid": self.pid.state_dict() if self.pid is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state["loss"])
        for key, optim in self.optimizers.items():
            optim.load_state_dict(state["optimizers"][key])
        if self.pid is not None:
            self.pid.load_state_dict(state["pid"])


@hydra.main(config_path="config", config_name="hmc_sac", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg, HMCSAC)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
