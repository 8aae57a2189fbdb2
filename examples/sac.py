"""The baseline: TorchRL's own ``SACLoss`` with the networks, data and budget of ``hmc_sac.py``.

python examples/sac.py env=Ant-v4
python examples/sac.py preset=quick
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torchrl.objectives import SACLoss, SoftUpdate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from any directory

from examples.experiment import run
from examples.utils import make_critic, make_stochastic_policy


class SAC:
    """TorchRL SAC (v2: twin Q, no V network), automatic or fixed entropy coefficient."""

    def __init__(self, cfg: DictConfig, env, device: torch.device) -> None:
        self.policy = make_stochastic_policy(cfg, env).to(device)
        self.loss = SACLoss(
            self.policy,
            make_critic(cfg, env).to(device),
            num_qvalue_nets=2,
            loss_function=cfg.optim.loss_function,
            alpha_init=cfg.sac.alpha_init,
            fixed_alpha=cfg.sac.fixed_alpha,
            delay_actor=False,
            delay_qvalue=True,
            action_spec=env.action_spec,
        ).to(device)
        self.loss.make_value_estimator(gamma=cfg.optim.gamma)
        self.target_updater = SoftUpdate(self.loss, eps=cfg.optim.polyak)
        critic_params = list(self.loss.qvalue_network_params.values(True, True))
        actor_params = list(self.loss.actor_network_params.values(True, True))
        self.optimizers = {
            "actor": torch.optim.Adam(actor_params, lr=cfg.optim.lr),
            "critic": torch.optim.Adam(critic_params, lr=cfg.optim.lr),
        }
        if not cfg.sac.fixed_alpha:
            self.optimizers["alpha"] = torch.optim.Adam([self.loss.log_alpha], lr=cfg.optim.lr)
        self.replay_keys = self.loss.in_keys

    def begin_iteration(self) -> None:
        pass

    def update(self, batch) -> dict[str, float]:
        out = self.loss(batch)
        total = out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]
        for optim in self.optimizers.values():
            optim.zero_grad(set_to_none=True)
        total.backward()
        for optim in self.optimizers.values():
            optim.step()
        self.target_updater.step()
        return {k: v.item() for k, v in out.items() if v.numel() == 1}

    def end_iteration(self, metrics: list[dict[str, float]]) -> dict[str, float]:
        return {"alpha": math.exp(self.loss.log_alpha.item())}

    def state_dict(self) -> dict:
        return {
            "loss": self.loss.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state["loss"])
        for key, optim in self.optimizers.items():
            optim.load_state_dict(state["optimizers"][key])


@hydra.main(config_path="config", config_name="sac", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg, SAC)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
