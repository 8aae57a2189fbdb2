"""The recipes' methods: each builds its actor, loss and optimisers from a configuration and
makes one update per call (:class:`~torchrl_mcmc.recipes.methods.base.Method`)."""

from typing import Any

from omegaconf import DictConfig

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

#: Every section that one recipe's method reads and another's does not (``hmc``, ``sac``...).
RECIPE_SECTIONS: frozenset[str] = frozenset().union(*(m.sections for m in METHODS.values()))


def recipe_of(cfg: DictConfig) -> str | None:
    """The recipe whose configuration ``cfg`` is, told by its sections (``method`` is a free
    name: ``method=hmc_sac_ent`` names a variant's runs); ``None`` if it is none of theirs.

    Examples:
        >>> from torchrl_mcmc.recipes import compose_config
        >>> recipe_of(compose_config("bon_sac")), recipe_of(compose_config("td3"))
        ('bon_sac', 'td3')
    """
    found = RECIPE_SECTIONS & set(cfg)
    return next((name for name, m in METHODS.items() if m.sections == found), None)


def method_fit_problem(cfg: DictConfig, method_cls: Any) -> str | None:
    """Why ``cfg`` is not ``method_cls``'s recipe's configuration (a section it reads is
    missing, or one only another recipe's methods read is there); ``None`` if it is, or if
    ``method_cls`` names no sections (a method of the user's own)."""
    own = getattr(method_cls, "sections", None)
    if not own:
        return None
    missing, foreign = sorted(own - set(cfg)), sorted((RECIPE_SECTIONS - own) & set(cfg))
    found = [f"it lacks {', '.join(missing)}"] if missing else []
    if foreign:
        found.append(f"it has {', '.join(foreign)}, which {method_cls.__name__} does not read")
    return (
        f"this configuration is not {method_cls.__name__}'s: {'; '.join(found)}" if found else None
    )


__all__ = [
    "HMCSAC",
    "LDTD3",
    "METHODS",
    "RECIPE_SECTIONS",
    "SAC",
    "TD3",
    "BestOfNSAC",
    "LossMethod",
    "Method",
    "adam_for_actor_and_critics",
    "method_fit_problem",
    "recipe_of",
    "sac_loss_kwargs",
]
