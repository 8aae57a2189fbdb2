"""The objectives: TorchRL ``LossModule`` s over the actors."""

from torchrl_mcmc.objectives.best_of_n_loss import BestOfNSACLoss
from torchrl_mcmc.objectives.hmc_loss import HMCLoss
from torchrl_mcmc.objectives.langevin_loss import LangevinFlowLoss

__all__ = ["BestOfNSACLoss", "HMCLoss", "LangevinFlowLoss"]
