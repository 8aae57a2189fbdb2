"""The actors' side of one default configuration: what ``tests/test_loss_defaults.py`` (the
recipes' keyword arguments against the constructors' defaults and ``PAPER_KWARGS``) does not
cover, the values the recipes set outside the actors' keyword arguments (``beta``) and the
control, best of N. A change of a recipe's YAML fails here until the library follows."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from torchrl_mcmc import BestOfNActor, HMCActor, LangevinFlowActor
from torchrl_mcmc.recipes import compose_config


def _defaults(cls: type) -> dict[str, Any]:
    parameters = inspect.signature(cls).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def test_the_best_of_n_default_is_the_control_recipes() -> None:
    assert _defaults(BestOfNActor)["num_samples"] == compose_config("bon_sac").bon.num_samples


def test_beta_starts_where_the_recipes_start_it() -> None:
    # HMC-SAC: with the default, uniform prior beta is SAC's temperature, started at
    # hmc.alpha_init; with the paper's, the PID's start pid.beta_init. LD-TD3: pid.beta_init.
    hmc = _defaults(HMCActor)
    assert hmc["prior"] == "uniform" and hmc["beta"] == compose_config("hmc_sac").hmc.alpha_init
    paper = compose_config("hmc_sac", ["variant=paper"])
    assert paper.hmc.prior == "policy"
    assert HMCActor.PAPER_KWARGS["beta"] == paper.pid.beta_init
    ld_paper = compose_config("ld_td3", ["pid.enabled=true"])
    assert _defaults(LangevinFlowActor)["beta"] == ld_paper.pid.beta_init


def test_the_paper_kwargs_are_fixed_read_only_and_only_what_differs() -> None:
    assert dict(HMCActor.PAPER_KWARGS) == {
        "prior": "policy",
        "potential_critic": "min",
        "beta": 0.05,
    }
    assert not LangevinFlowActor.PAPER_KWARGS and not BestOfNActor.PAPER_KWARGS
    defaults = _defaults(HMCActor)
    assert all(defaults[name] != value for name, value in HMCActor.PAPER_KWARGS.items())
    with pytest.raises(TypeError):
        HMCActor.PAPER_KWARGS["prior"] = "uniform"  # no run can change it
