"""The TorchRL edges: actors that read and write TensorDicts."""

from torchrl_mcmc.modules.hmc_actor import HMCActor, HMCSample
from torchrl_mcmc.modules.langevin_actor import LangevinFlowActor, LangevinSample

__all__ = ["HMCActor", "HMCSample", "LangevinFlowActor", "LangevinSample"]
