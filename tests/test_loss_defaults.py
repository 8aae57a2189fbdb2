"""One default configuration: the losses' and actors' defaults are the recipes' composed
defaults, and the paper's configuration is each class's ``PAPER_KWARGS`` away. A change of a
recipe's YAML fails here until the library follows (and the other way round). Settings that a
configuration ignores are reported, and the names logged are SAC's."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import make_critic, make_policy, make_transitions

from torchrl_mcmc import HMCActor, HMCLoss, LangevinFlowActor, LangevinFlowLoss
from torchrl_mcmc.recipes import HMCSAC, compose_config, make_env
from torchrl_mcmc.recipes.methods.hmc_sac import hmc_actor_kwargs, hmc_loss_kwargs
from torchrl_mcmc.recipes.methods.ld_td3 import ld_actor_kwargs, ld_loss_kwargs

#: (recipe, class, the recipe's keyword arguments for that class).
CONSTRUCTORS = [
    ("hmc_sac", HMCActor, hmc_actor_kwargs),
    ("hmc_sac", HMCLoss, hmc_loss_kwargs),
    ("ld_td3", LangevinFlowActor, ld_actor_kwargs),
    ("ld_td3", LangevinFlowLoss, ld_loss_kwargs),
]
#: Each recipe's overrides for the paper's configuration.
PAPER = {"hmc_sac": ["variant=paper"], "ld_td3": ["pid.enabled=true"]}


def _defaults(cls: type) -> dict[str, Any]:
    parameters = inspect.signature(cls).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _configured(recipe: str, kwargs_of: Callable, overrides: list[str]) -> dict[str, Any]:
    kwargs = kwargs_of(compose_config(recipe, overrides))
    assert kwargs, "nothing to compare"
    return kwargs


@pytest.mark.parametrize(("recipe", "cls", "kwargs_of"), CONSTRUCTORS)
def test_the_recipes_defaults_are_the_constructors_defaults(recipe, cls, kwargs_of) -> None:
    configured = _configured(recipe, kwargs_of, [])
    defaults = _defaults(cls)
    assert configured == {name: defaults[name] for name in configured}


@pytest.mark.parametrize(("recipe", "cls", "kwargs_of"), CONSTRUCTORS)
def test_the_papers_configuration_is_paper_kwargs_away(recipe, cls, kwargs_of) -> None:
    configured = _configured(recipe, kwargs_of, PAPER[recipe])
    paper = {**_defaults(cls), **getattr(cls, "PAPER_KWARGS", {})}
    assert configured == {name: paper[name] for name in configured}


def test_the_paper_kwargs_of_the_losses_are_fixed_and_differ_from_the_defaults() -> None:
    assert dict(HMCLoss.PAPER_KWARGS) == {
        "update_mode": "alternating",
        "next_action": "chain",
        "value_entropy": "none",
    }
    assert dict(LangevinFlowLoss.PAPER_KWARGS) == {"update_mode": "alternating"}
    with pytest.raises(TypeError):
        HMCLoss.PAPER_KWARGS["update_mode"] = "joint"  # read-only: no run can change it


# ---------------------------------------------------------------------------- ignored settings
OBS, ACT = 4, 2
_IGNORED = "ignored"


def _hmc_loss(prior: str, **kwargs) -> HMCLoss:
    actor = HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT), num_steps=1, prior=prior)
    return HMCLoss(actor, **kwargs)


@pytest.mark.parametrize(
    ("prior", "kwargs", "named"),
    [
        ("policy", {"alpha_init": 0.2}, ["alpha_init=0.2"]),
        ("policy", {"target_entropy": -3.0}, ["target_entropy=-3.0"]),
        ("policy", {"alpha_init": 0.2, "target_entropy": -3.0}, ["alpha_init", "target_entropy"]),
        ("policy", {"alpha_init": 1.0, "target_entropy": "auto"}, []),  # the defaults
        ("uniform", {"alpha_init": 0.2, "target_entropy": -3.0}, []),  # used
    ],
)
def test_the_temperatures_settings_are_reported_ignored_under_the_policy_prior(
    caplog, prior: str, kwargs: dict, named: list[str]
) -> None:
    with caplog.at_level(logging.WARNING, logger="torchrl_mcmc"):
        loss = _hmc_loss(prior, **kwargs)
    warnings = [r.getMessage() for r in caplog.records if _IGNORED in r.getMessage()]
    if not named:
        assert not warnings
        return
    (message,) = warnings
    assert all(name in message for name in named) and "prior='policy'" in message
    assert not loss.tunes_alpha  # and indeed nothing tunes beta


def _hmc_sac(*overrides: str) -> HMCSAC:
    cfg = compose_config("hmc_sac", ["preset=smoke", "env=Pendulum-v1", *overrides])
    env = make_env(cfg)
    try:
        return HMCSAC(cfg, env, torch.device("cpu"))
    finally:
        env.close()


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["pid.target=0.2", "pid.beta_init=0.1"], ["pid.target=0.2", "pid.beta_init=0.1"]),
        (["pid.enabled=false"], ["pid.enabled=False"]),
        ([], []),  # the default: the PID section as the recipe has it, nothing to report
        (["hmc.prior=policy", "pid.target=0.2"], []),  # the paper's prior uses it
    ],
)
def test_the_recipe_reports_pid_settings_the_uniform_prior_ignores(
    caplog, overrides: list[str], named: list[str]
) -> None:
    with caplog.at_level(logging.WARNING, logger="torchrl_mcmc"):
        method = _hmc_sac(*overrides)
    warnings = [r.getMessage() for r in caplog.records if "ignores pid." in r.getMessage()]
    assert len(warnings) == bool(named)
    assert all(name in warnings[0] for name in named)
    if named:
        assert method.pid is None and method.loss.tunes_alpha


# ---------------------------------------------------------------------------- SAC's names
def test_the_entropy_prior_logs_sacs_alpha_and_no_paper_diagnostics() -> None:
    method = _hmc_sac()  # the default: the uniform prior
    metrics = method.update(make_transitions(3, 1, 32))
    assert {"loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy"} <= metrics.keys()
    assert not {"beta", "policy_distance"} & metrics.keys()
    assert set(method.loss.out_keys) >= metrics.keys()
    # alpha is exp(log alpha), which the update just moved off its initial 1.
    alpha = math.exp(method.loss.log_alpha.item())
    assert method.end_iteration([metrics]) == {"alpha": alpha} and alpha != 1.0
    assert method.loss.actor.beta.item() == pytest.approx(metrics["alpha"])


def test_the_papers_prior_logs_beta_and_its_distance() -> None:
    method = _hmc_sac("variant=paper", "pid.beta_init=0.07")
    assert method.loss.beta.item() == pytest.approx(0.07)  # the PID's start, in the actor
    metrics = method.update(make_transitions(3, 1, 32))
    assert {"beta", "policy_distance", "loss_flow"} <= metrics.keys()
    assert not {"alpha", "loss_alpha"} & metrics.keys()
    assert set(method.loss.out_keys) >= metrics.keys()
    assert "beta" in method.end_iteration([metrics])
