"""The TorchRL edges: actors that read and write TensorDicts."""

from torchrl_mcmc.modules.best_of_n import BestOfNActor
from torchrl_mcmc.modules.hmc_actor import HMCActor, HMCSample
from torchrl_mcmc.modules.langevin_actor import LangevinFlowActor, LangevinSample

__all__ = ["BestOfNActor", "HMCActor", "HMCSample", "LangevinFlowActor", "LangevinSample"]
