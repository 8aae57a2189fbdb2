"""The recipes' methods: each builds its actor, loss and optimisers from a configuration and
makes one update per call (:class:`~torchrl_mcmc.recipes.methods.base.Method`)."""

from torchrl_mcmc.recipes.methods.base import LossMethod, Method, adam_for_actor_and_critics
from torchrl_mcmc.recipes.methods.bon_sac import BestOfNSAC
from torchrl_mcmc.recipes.methods.hmc_sac import HMCSAC
from torchrl_mcmc.recipes.methods.ld_td3 import LDTD3
from torchrl_mcmc.recipes.methods.sac import SAC, sac_loss_kwargs
from torchrl_mcmc.recipes.methods.td3 import TD3

#: Each recipe's method class by the name of its configuration (``config/<name>.yaml``).
METHODS: dict[str, type[LossMethod]] = {
    "sac": SAC,
    "hmc_sac": HMCSAC,
    "bon_sac": BestOfNSAC,
    "td3": TD3,
    "ld_td3": LDTD3,
}

__all__ = [
    "HMCSAC",
    "LDTD3",
    "METHODS",
    "SAC",
    "TD3",
    "BestOfNSAC",
    "LossMethod",
    "Method",
    "adam_for_actor_and_critics",
    "sac_loss_kwargs",
]
