"""The objectives: TorchRL ``LossModule`` s over the actors."""

from torchrl_mcmc.objectives.hmc_loss import HMCLoss

__all__ = ["HMCLoss"]
