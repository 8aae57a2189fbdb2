"""The TorchRL edges: actors that read and write TensorDicts."""

from torchrl_mcmc.modules.hmc_actor import HMCActor, HMCSample

__all__ = ["HMCActor", "HMCSample"]
