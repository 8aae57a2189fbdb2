"""LD-TD3: a TD3 agent whose action is refined by a Langevin flow on the critic (paper §3.1).

    python examples/ld_td3.py env=Ant-v4
    python examples/ld_td3.py preset=quick

Everything but the method is shared with ``td3.py`` through ``utils.py`` and ``experiment.py``.
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
from examples.utils import make_critic, make_deterministic_policy
from torchrl_mcmc import LangevinFlowActor, LangevinFlowLoss, PIDController


class LDTD3:
    """LangevinFlowActor + LangevinFlowLoss + PID beta, TD3's delayed policy updates."""

    def __init__(self, cfg: DictConfig, env, device: torch.device) -> None:
        self.actor = LangevinFlowActor(
            make_deterministic_policy(cfg, env),
            make_critic(cfg, env),
            state_dim=env.observation_spec["observation"].shape[-1],
            action_spec=env.action_spec,
            num_layers=cfg.flow.num_layers,
            step_size=cfg.flow.step_size,
            hidden=cfg.flow.hidden,
            beta=cfg.pid.beta_init,
            exploration_noise=cfg.td3.exploration_noise,
        ).to(device)
        self.loss = LangevinFlowLoss(
            self.actor,
            loss_function=cfg.optim.loss_function,
            policy_noise=cfg.td3.policy_noise,
            noise_clip=cfg.td3.noise_clip,
            update_mode=cfg.flow.update_mode,
        ).to(device)
        self.loss.make_value_estimator(gamma=cfg.optim.gamma)
        self.target_updater = SoftUpdate(self.loss, eps=cfg.optim.polyak)
        self.optim_critic = torch.optim.Adam(self.loss.critic_parameters(), lr=cfg.optim.lr)
        self.optim_policy = torch.optim.Adam(self.loss.policy_parameters(), lr=cfg.optim.lr)
        self.optim_flow = torch.optim.Adam(self.loss.flow_parameters(), lr=cfg.flow.lr)
        gains = {k: v for k, v in cfg.pid.items() if k != "enabled"}
        self.pid = PIDController(**gains) if cfg.pid.enabled else None
        self.policy_delay = cfg.td3.policy_delay
        self.steps = 0
        self.policy = self.actor
        self.replay_keys = self.loss.in_keys

    def begin_iteration(self) -> None:
        self.loss.refresh_prior()  # theta_t <- theta once per policy iteration

    def _step(self, loss: torch.Tensor, optim: torch.optim.Optimizer) -> None:
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    def update(self, batch) -> dict[str, float]:
        self.steps += 1
        loss_qvalue, _ = self.loss.qvalue_loss(batch)
        self._step(loss_qvalue, self.optim_critic)
        metrics = {"loss_qvalue": loss_qvalue.item()}
        if self.steps % self.policy_delay == 0:
            loss_actor, info = self.loss.actor_loss(batch)
            if self.loss.update_mode == "joint":
                self.optim_flow.zero_grad(set_to_none=True)
                self._step(loss_actor, self.optim_policy)
                self.optim_flow.step()
            else:
                self._step(loss_actor, self.optim_policy)
                loss_flow, _ = self.loss.flow_loss(batch)  # eq. 11: h moves at the new theta
                self._step(loss_flow, self.optim_flow)
                metrics["loss_flow"] = loss_flow.item()
            self.target_updater.step()
            metrics["loss_actor"] = loss_actor.item()
            metrics.update({k: float(v) for k, v in info.items()})
        return metrics

    def end_iteration(self, metrics: list[dict[str, float]]) -> dict[str, float]:
        distances = [m["policy_distance"] for m in metrics if "policy_distance" in m]
        if self.pid is None or not distances:
            return {"beta": self.loss.beta.item()}
        distance = sum(distances) / len(distances)
        self.loss.beta = self.pid.update(distance)
        return {"pid_distance": distance, "beta": self.pid.beta}

    def state_dict(self) -> dict:
        return {
            "loss": self.loss.state_dict(),
            "optimizers": [
                o.state_dict() for o in (self.optim_critic, self.optim_policy, self.optim_flow)
            ],
            "pid": self.pid.state_dict() if self.pid is not None else None,
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state["loss"])
        for optim, saved in zip(
            (self.optim_critic, self.optim_policy, self.optim_flow),
            state["optimizers"],
            strict=True,
        ):
            optim.load_state_dict(saved)
        if self.pid is not None:
            self.pid.load_state_dict(state["pid"])
        self.steps = state["steps"]


@hydra.main(config_path="config", config_name="ld_td3", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg, LDTD3)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
