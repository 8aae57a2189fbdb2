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
from torchrl.objectives import TD3Loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from any directory

from examples.experiment import LossMethod, adam_for_actor_and_critics, run
from examples.utils import make_critic, make_deterministic_policy, make_td3_exploration


class TD3(LossMethod):
    """TorchRL TD3: twin critics, target policy smoothing, delayed policy and target updates."""

    optimizer_layout = "flat"
    delayed_policy = True

    def __init__(self, cfg: DictConfig, env, device: torch.device) -> None:
        actor = make_deterministic_policy(cfg, env).to(device)
        policy = TensorDictSequential(actor, make_td3_exploration(cfg, env)).to(device)
        loss = TD3Loss(
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
        optimizers = adam_for_actor_and_critics(loss, cfg.optim.lr)
        super().__init__(cfg, loss, policy=policy, optimizers=optimizers)

    def update(self, batch) -> dict[str, float]:
        loss_qvalue, _ = self.loss.value_loss(batch)  # TorchRL's name for the critic loss
        self._step(loss_qvalue, "critic")
        metrics = {"loss_qvalue": loss_qvalue.item()}
        if self._policy_turn():
            loss_actor, _ = self.loss.actor_loss(batch)
            self._step(loss_actor, "actor")
            self.target_updater.step()
            metrics["loss_actor"] = loss_actor.item()
        return metrics


@hydra.main(config_path="config", config_name="td3", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg, TD3)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
