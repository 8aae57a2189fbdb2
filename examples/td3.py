"""The deterministic baseline: TorchRL's own ``TD3Loss`` with the budget of ``ld_td3.py``.

python examples/td3.py env=Ant-v4
python examples/td3.py preset=quick
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tensordict.nn import TensorDictSequential
from torchrl.objectives import SoftUpdate, TD3Loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from any directory

from examples.experiment import run
from examples.utils import make_critic, make_deterministic_policy, make_td3_exploration


class TD3:
    """TorchRL TD3: twin critics, target policy smoothing, delayed policy and target updates."""

    def __init__(self, cfg: DictConfig, env, device: torch.device) -> None:
        actor = make_deterministic_policy(cfg, env).to(device)
        self.policy = TensorDictSequential(actor, make_td3_exploration(cfg, env)).to(device)
        self.loss = TD3Loss(
            actor,
            make_critic(cfg, env).to(device),
            num_qvalue_nets=2,
            action_spec=env.action_spec,
            policy_noise=cfg.td3.policy_noise,
            noise_clip=cfg.td3.noise_clip,
            loss_function=cfg.optim.loss_function,
            delay_actor=True,
            delay_qvalue=True,
        ).to(device)
        self.loss.make_value_estimator(gamma=cfg.optim.gamma)
        self.target_updater = SoftUpdate(self.loss, eps=cfg.optim.polyak)
        self.optim_actor = torch.optim.Adam(
            self.loss.actor_network_params.values(True, True), lr=cfg.optim.lr
        )
        self.optim_critic = torch.optim.Adam(
            self.loss.qvalue_network_params.values(True, True), lr=cfg.optim.lr
        )
        self.policy_delay = cfg.td3.policy_delay
        self.steps = 0
        self.replay_keys = self.loss.in_keys

    def begin_iteration(self) -> None:
        pass

    def update(self, batch) -> dict[str, float]:
        self.steps += 1
        loss_qvalue, _ = self.loss.value_loss(batch)  # TorchRL's name for the critic loss
        self.optim_critic.zero_grad(set_to_none=True)
        loss_qvalue.backward()
        self.optim_critic.step()
        metrics = {"loss_qvalue": loss_qvalue.item()}
        if self.steps % self.policy_delay == 0:
            loss_actor, _ = self.loss.actor_loss(batch)
            self.optim_actor.zero_grad(set_to_none=True)
            loss_actor.backward()
            self.optim_actor.step()
            self.target_updater.step()
            metrics["loss_actor"] = loss_actor.item()
        return metrics

    def end_iteration(self, metrics: list[dict[str, float]]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {
            "loss": self.loss.state_dict(),
            "optim_actor": self.optim_actor.state_dict(),
            "optim_critic": self.optim_critic.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state["loss"])
        self.optim_actor.load_state_dict(state["optim_actor"])
        self.optim_critic.load_state_dict(state["optim_critic"])
        self.steps = state["steps"]


@hydra.main(config_path="config", config_name="td3", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg, TD3)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
