"""torchrl_mcmc: MCMC policy optimisation for TorchRL.

A policy proposes an action; a few steps of Hamiltonian Monte Carlo (stochastic policies) or a
Langevin flow (deterministic policies) driven by the critic's gradient refine it; a PID
controller keeps the policy's KL step near a target.
"""

from torchrl_mcmc.control import PIDBetaHook, PIDController
from torchrl_mcmc.modules import BestOfNActor, HMCActor, HMCSample, LangevinFlowActor
from torchrl_mcmc.objectives import BestOfNSACLoss, HMCLoss, LangevinFlowLoss

__all__ = [
    "BestOfNActor",
    "BestOfNSACLoss",
    "HMCActor",
    "HMCLoss",
    "HMCSample",
    "LangevinFlowActor",
    "LangevinFlowLoss",
    "PIDBetaHook",
    "PIDController",
]

__version__ = "0.1.0"
