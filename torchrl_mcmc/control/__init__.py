"""Control of the KL multiplier ``beta``: the PID rule and its TorchRL trainer hook."""

from torchrl_mcmc.control.hooks import PIDBetaHook
from torchrl_mcmc.control.pid import PIDController

__all__ = ["PIDBetaHook", "PIDController"]
