"""What every value of the recipes' configurations may be.

:data:`CONFIG_RULES` holds one rule per key of ``config/*.yaml`` (every recipe; a section
that a recipe does not have is skipped), :data:`CROSS_RULES` the constraints between keys.
:func:`validate_config` checks them all in one pass and reports every bad value at once, each
with its key, its value and what is allowed, before a run creates anything. A new config key
gets its rule here (``tests/test_config_rules.py`` fails for a key without one). What a resumed
run may change is :mod:`~torchrl_mcmc.recipes.run_dir`'s.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch
from omegaconf import DictConfig, OmegaConf

from torchrl_mcmc.recipes.factories import ACTIVATIONS, KNOWN_ENVS


class ConfigError(ValueError):
    """A bad configuration value (or ``resume=``), caught before anything is created."""


#: A rule: ``value -> None`` when allowed, else what is allowed ("must be ...").
Rule = Callable[[Any], str | None]


# ---------------------------------------------------------------------------- rule builders
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int, maximum: int | None = None) -> Rule:
    """An ``int`` (not a bool, not ``2.0``) in ``[minimum, maximum]``."""
    if maximum is None:
        allowed = f"an integer >= {minimum}"
    else:
        allowed = f"an integer in [{minimum}, {maximum}]"

    def rule(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and value >= minimum and (maximum is None or value <= maximum)
        return None if ok else f"must be {allowed}"

    return rule


def number(
    *, above: float | None = None, at_least: float | None = None, at_most: float | None = None
) -> Rule:
    """A finite real (an ``int`` will do) ``> above``, ``>= at_least`` and ``<= at_most``."""
    bounds = [
        f"> {above}" if above is not None else None,
        f">= {at_least}" if at_least is not None else None,
        f"<= {at_most}" if at_most is not None else None,
    ]
    allowed = " and ".join(b for b in bounds if b)

    def rule(value: Any) -> str | None:
        ok = _is_number(value)
        ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
        ok = ok and (at_most is None or value <= at_most)
        return None if ok else f"must be a finite number {allowed}".rstrip()

    return rule


def optional(rule: Rule) -> Rule:
    """``null``, or what ``rule`` allows."""

    def optional_rule(value: Any) -> str | None:
        problem = None if value is None else rule(value)
        return None if problem is None else f"{problem}, or null"

    return optional_rule


def either(choice: Any, rule: Rule) -> Rule:
    """``choice``, or what ``rule`` allows."""

    def either_rule(value: Any) -> str | None:
        problem = None if value == choice and type(value) is type(choice) else rule(value)
        return (
            None
            if problem is None
            else f"must be {show_value(choice)} or {problem.removeprefix('must be ')}"
        )

    return either_rule


def one_of(*choices: Any) -> Rule:
    """One of ``choices``, of the same type (``1`` is not ``true``)."""

    def rule(value: Any) -> str | None:
        ok = value in choices and type(value) in {type(c) for c in choices}
        return None if ok else f"must be one of {', '.join(map(show_value, choices))}"

    return rule


def flag(value: Any) -> str | None:
    """A boolean (Hydra reads ``true``/``false``; ``yes``, ``1`` are a string, an int)."""
    return None if isinstance(value, bool) else "must be true or false"


def text(value: Any) -> str | None:
    """A non-empty string."""
    return None if isinstance(value, str) and value else "must be a non-empty string"


def widths(value: Any) -> str | None:
    """Hidden layer widths of an ``MLP``: a list (empty for a linear map) of positive ints."""
    ok = isinstance(value, list) and all(integer(1)(w) is None for w in value)
    return None if ok else "must be a list of layer widths, each an integer >= 1 ([] for none)"


# ---------------------------------------------------------------------------- custom rules
def env_id(value: Any) -> str | None:
    """A Gymnasium id registered here (MuJoCo's included)."""
    if isinstance(value, str) and value in gym.registry:
        return None
    return (
        f"must be a registered Gymnasium id; with a config: {', '.join(KNOWN_ENVS)} "
        "(-v5 ids of these work too, via env.name=...)"
    )


def device(value: Any) -> str | None:
    """``auto``, ``cpu``, or a CUDA device that exists here."""
    allowed = "must be auto, cpu, cuda or cuda:N naming a CUDA device torch sees"
    if value == "auto":
        return None
    try:
        parsed = torch.device(value)
    except (RuntimeError, TypeError):
        return allowed
    if parsed.type == "cpu":
        return None
    if parsed.type == "cuda" and (parsed.index or 0) < torch.cuda.device_count():
        return None
    return f"{allowed} (it sees {torch.cuda.device_count()})"


#: TorchRL logger backends, and the package each needs.
LOGGER_PACKAGES = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb"}


def logger_backend(value: Any) -> str | None:
    """A TorchRL logger backend whose package is installed."""
    problem = one_of(*LOGGER_PACKAGES)(value)
    if problem is not None:
        return problem
    package = LOGGER_PACKAGES[value]
    if package is not None and importlib.util.find_spec(package) is None:
        return f"needs the {package} package, which is not installed (csv needs none)"
    return None


# ---------------------------------------------------------------------------- the table
_positive = number(above=0)
_non_negative = number(at_least=0)

#: One rule per config key of the five recipes (a section a recipe lacks is skipped).
CONFIG_RULES: dict[str, Rule] = {
    # common.yaml
    "method": text,
    "seed": integer(0, 2**32 - 1),  # numpy's seed range
    "device": device,
    "threads": integer(0),
    "run_root": text,
    "resume": optional(text),
    "progress_bar": flag,
    "collector.total_frames": integer(1),
    "collector.frames_per_batch": integer(1),
    "collector.init_random_frames": integer(0),
    "collector.num_workers": integer(1),
    "collector.compile_policy": flag,
    "replay.size": integer(1),
    "replay.batch_size": integer(1),
    "optim.lr": _positive,
    "optim.utd_ratio": _positive,
    "optim.gamma": number(at_least=0, at_most=1),
    "optim.polyak": number(at_least=0, at_most=1),  # TorchRL SoftUpdate's eps
    "optim.loss_function": one_of("l2", "smooth_l1", "l1"),
    "network.hidden": widths,
    "network.policy_hidden": optional(widths),
    "network.activation": one_of(*ACTIVATIONS),
    "network.default_scale": _positive,
    "eval.interval_frames": integer(1),
    "eval.episodes": integer(1),
    "eval.video": flag,
    "checkpoint.interval_frames": integer(1),
    "checkpoint.keep": integer(1),
    "checkpoint.save_replay_buffer": flag,
    "logger.backend": logger_backend,
    "logger.exp_name": text,
    "logger.project": text,
    # env/*.yaml
    "env.name": env_id,
    "env.max_episode_steps": integer(1),
    # hmc_sac.yaml
    "hmc.num_steps": integer(0),
    "hmc.step_size": _positive,
    "hmc.gated": flag,
    "hmc.gate_hidden": integer(1),
    "hmc.gate_state": flag,
    "hmc.lr": _positive,
    "hmc.update_mode": one_of("alternating", "joint"),
    "hmc.h_update_interval": integer(1),
    "hmc.prior": one_of("policy", "uniform"),
    "hmc.potential_critic": one_of("min", "first", "mean_std"),
    "hmc.pessimism": _non_negative,
    "hmc.next_action": one_of("chain", "base"),
    "hmc.value_entropy": optional(one_of("none", "auxiliary")),
    "hmc.target_entropy": either("auto", number()),
    "hmc.alpha_init": _positive,
    # hmc_sac.yaml and ld_td3.yaml
    "pid.enabled": flag,
    "pid.target": _positive,
    "pid.kp": optional(_non_negative),
    "pid.ki": optional(_non_negative),
    "pid.kd": _non_negative,
    "pid.beta_init": _positive,
    "pid.beta_min": _positive,
    "pid.beta_max": _positive,
    "pid.iteration_updates": optional(integer(1)),
    # ld_td3.yaml
    "flow.num_layers": integer(0),
    "flow.step_size": _positive,
    "flow.hidden": integer(1),
    "flow.lr": _positive,
    "flow.update_mode": one_of("alternating", "joint"),
    "flow.potential_critic": one_of("min", "first", "mean_std"),
    "flow.pessimism": _non_negative,
    # td3.yaml and ld_td3.yaml
    "td3.exploration_noise": _non_negative,
    "td3.policy_noise": _non_negative,
    "td3.noise_clip": _non_negative,
    "td3.policy_delay": integer(1),
    # sac.yaml
    "sac.alpha_init": _positive,
    "sac.fixed_alpha": flag,
    # bon_sac.yaml
    "bon.num_samples": integer(1),
}


def _beta_order(beta_min: float, beta_init: float, beta_max: float) -> str | None:
    if beta_min <= beta_init <= beta_max:
        return None
    return "need pid.beta_min <= pid.beta_init <= pid.beta_max (beta is clamped to that range)"


def _whole_batches_per_worker(frames_per_batch: int, num_workers: int) -> str | None:
    if frames_per_batch % num_workers == 0:
        return None
    return "collector.frames_per_batch must be a multiple of collector.num_workers"


def _pessimism_needs_mean_std(potential_critic: str, pessimism: float) -> str | None:
    if potential_critic == "mean_std" or pessimism == 1.0:
        return None
    return "pessimism is read only with potential_critic=mean_std (leave it at 1.0 otherwise)"


#: Constraints between keys: ``(keys, rule(*values))``, checked once each key passed its own.
CROSS_RULES: tuple[tuple[tuple[str, ...], Callable[..., str | None]], ...] = (
    (("pid.beta_min", "pid.beta_init", "pid.beta_max"), _beta_order),
    (("collector.frames_per_batch", "collector.num_workers"), _whole_batches_per_worker),
    (("hmc.potential_critic", "hmc.pessimism"), _pessimism_needs_mean_std),
    (("flow.potential_critic", "flow.pessimism"), _pessimism_needs_mean_std),
)


# ---------------------------------------------------------------------------- validation
_ABSENT = object()


def show_value(value: Any) -> str:
    """A value as one writes it on the command line (``null``, ``true``, ``'text'``, ``3``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def _applies(key: str, cfg: DictConfig) -> bool:
    """Top-level keys concern every recipe; a section's keys only recipes with that section."""
    return "." not in key or key.split(".", 1)[0] in cfg


def config_problems(cfg: DictConfig) -> list[str]:
    """Every value of ``cfg`` that breaks :data:`CONFIG_RULES` or :data:`CROSS_RULES`."""
    values = leaves(cfg)
    problems, passed = [], set()
    for key, rule in CONFIG_RULES.items():
        if not _applies(key, cfg):
            continue
        value = values.get(key, _ABSENT)
        problem = rule(None if value is _ABSENT else value)
        if problem is None:
            passed.add(key)
        elif value is _ABSENT:
            problems.append(f"{key} is missing: it {problem}")
        else:
            problems.append(f"{key}={show_value(value)}: {problem}")
    for keys, rule in CROSS_RULES:
        if all(k in passed for k in keys):
            problem = rule(*(values[k] for k in keys))
            if problem is not None:
                shown = ", ".join(f"{k}={show_value(values[k])}" for k in keys)
                problems.append(f"{shown}: {problem}")
    return problems


def validate_config(cfg: DictConfig) -> None:
    """Raises a :class:`ConfigError` that lists every bad value of ``cfg`` (key, value, what
    is allowed); returns quietly if there is none."""
    problems = config_problems(cfg)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} bad values:\n" + "\n".join(f"  {p}" for p in problems))


def leaves(cfg: DictConfig) -> dict[str, Any]:
    """``{"a.b": value}`` for every value of ``cfg`` below dictionaries (a list is one value),
    resolved, as plain Python values."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out
