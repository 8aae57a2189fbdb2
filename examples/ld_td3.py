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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from any directory

from examples.experiment import LossMethod, run
from examples.utils import make_critic, make_deterministic_policy
from torchrl_mcmc import LangevinFlowActor, LangevinFlowLoss


class LDTD3(LossMethod):
    """LangevinFlowActor + LangevinFlowLoss + PID beta, TD3's delayed policy updates."""

    optimizer_layout = "ordered"
    pid_controlled = True
    delayed_policy = True

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
        loss = LangevinFlowLoss(
            self.actor,
            loss_function=cfg.optim.loss_function,
            policy_noise=cfg.td3.policy_noise,
            noise_clip=cfg.td3.noise_clip,
            update_mode=cfg.flow.update_mode,
        ).to(device)
        # In this order: the checkpoint stores them as a list ("ordered").
        optimizers = {
            "critic": torch.optim.Adam(loss.critic_parameters(), lr=cfg.optim.lr),
            "policy": torch.optim.Adam(loss.policy_parameters(), lr=cfg.optim.lr),
            "flow": torch.optim.Adam(loss.flow_parameters(), lr=cfg.flow.lr),
        }
        super().__init__(cfg, loss, policy=self.actor, optimizers=optimizers)

    def begin_iteration(self) -> None:
        self.loss.refresh_prior()  # theta_t <- theta once per policy iteration

    def update(self, batch) -> dict[str, float]:
        loss_qvalue, _ = self.loss.qvalue_loss(batch)
        self._step(loss_qvalue, "critic")
        metrics = {"loss_qvalue": loss_qvalue.item()}
        if self._policy_turn():
            loss_actor, info = self.loss.actor_loss(batch)
            if self.loss.update_mode == "joint":
                self._step(loss_actor, "policy", "flow")
            else:
                self._step(loss_actor, "policy")
                loss_flow, _ = self.loss.flow_loss(batch)  # eq. 11: h moves at the new theta
                self._step(loss_flow, "flow")
                metrics["loss_flow"] = loss_flow.item()
            self.target_updater.step()
            metrics["loss_actor"] = loss_actor.item()
            metrics.update({k: float(v) for k, v in info.items()})
        return metrics

    def end_iteration(self, metrics: list[dict[str, float]]) -> dict[str, float]:
        # Without a controller, or without an actor update this iteration, beta is unchanged.
        return self._update_beta(metrics) or {"beta": self.loss.beta.item()}


@hydra.main(config_path="config", config_name="ld_td3", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg, LDTD3)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
