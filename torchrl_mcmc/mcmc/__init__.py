"""The math, free of TorchRL: integrators, gates, Gaussians in the unsquashed space."""

from torchrl_mcmc.mcmc.gaussian import (
    normal_log_prob,
    squash,
    squash_log_det,
    standard_normal_log_prob,
    unsquash,
)
from torchrl_mcmc.mcmc.hamiltonian import FlowOutput, GradientGate, HamiltonianFlow
from torchrl_mcmc.mcmc.integrators import (
    LeapfrogState,
    init_state,
    integrate,
    leapfrog_step,
    mark_non_finite,
    potential_grad,
)
from torchrl_mcmc.mcmc.langevin import (
    LangevinCoupling,
    LangevinFlow,
    LangevinFlowOutput,
    alternating_masks,
    smoothed_norm,
)

__all__ = [
    "FlowOutput",
    "GradientGate",
    "HamiltonianFlow",
    "LangevinCoupling",
    "LangevinFlow",
    "LangevinFlowOutput",
    "LeapfrogState",
    "alternating_masks",
    "init_state",
    "integrate",
    "leapfrog_step",
    "mark_non_finite",
    "normal_log_prob",
    "potential_grad",
    "smoothed_norm",
    "squash",
    "squash_log_det",
    "standard_normal_log_prob",
    "unsquash",
]
