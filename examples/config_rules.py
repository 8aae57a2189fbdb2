"""What every value of the scripts' configurations may be, and what a resumed run may change.

:data:`CONFIG_RULES` holds one rule per key of ``config/*.yaml`` (every script; a section
that a script does not have is skipped), :data:`CROSS_RULES` the constraints between keys.
:func:`validate_config` checks them all in one pass and reports every bad value at once, each
with its key, its value and what is allowed, before a run creates anything. A new config key
gets its rule here (``tests/test_config_rules.py`` fails for a key without one).

:func:`resume_config` decides what a resumed run continues with: the run's saved
configuration, changed only where :data:`RESUME_MAY_CHANGE` allows.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import torch
from omegaconf import DictConfig, OmegaConf

from examples.utils import ACTIVATIONS, KNOWN_ENVS, ConfigError

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
            else f"must be {_show(choice)} or {problem.removeprefix('must be ')}"
        )

    return either_rule


def one_of(*choices: Any) -> Rule:
    """One of ``choices``, of the same type (``1`` is not ``true``)."""

    def rule(value: Any) -> str | None:
        ok = value in choices and type(value) in {type(c) for c in choices}
        return None if ok else f"must be one of {', '.join(map(_show, choices))}"

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

#: One rule per config key of the four scripts (a section a script lacks is skipped).
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
    "hmc.potential_critic": one_of("min", "first"),
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
    # ld_td3.yaml
    "flow.num_layers": integer(0),
    "flow.step_size": _positive,
    "flow.hidden": integer(1),
    "flow.lr": _positive,
    "flow.update_mode": one_of("alternating", "joint"),
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


#: Constraints between keys: ``(keys, rule(*values))``, checked once each key passed its own.
CROSS_RULES: tuple[tuple[tuple[str, ...], Callable[..., str | None]], ...] = (
    (("pid.beta_min", "pid.beta_init", "pid.beta_max"), _beta_order),
    (("collector.frames_per_batch", "collector.num_workers"), _whole_batches_per_worker),
)


# ---------------------------------------------------------------------------- validation
_ABSENT = object()


def _show(value: Any) -> str:
    """A value as one writes it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def _applies(key: str, cfg: DictConfig) -> bool:
    """Top-level keys concern every script; a section's keys only scripts with that section."""
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
            problems.append(f"{key}={_show(value)}: {problem}")
    for keys, rule in CROSS_RULES:
        if all(k in passed for k in keys):
            problem = rule(*(values[k] for k in keys))
            if problem is not None:
                shown = ", ".join(f"{k}={_show(values[k])}" for k in keys)
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


# ---------------------------------------------------------------------------- resume
#: What a resumed run may change (a key, or a section ending in "."): how long it runs, how it
#: reports, evaluates and checkpoints, never what it learns or how.
RESUME_MAY_CHANGE = (
    "collector.total_frames",
    "collector.compile_policy",  # how fast it acts, not what
    "threads",
    "progress_bar",
    "eval.",
    "checkpoint.",
    "logger.",
)
#: Keys a resume ignores: where a new run would go, and the resume itself.
RESUME_IGNORES = ("resume", "run_root")


def _may_change(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE)


def _sections(cfg: DictConfig) -> list[str]:
    return sorted(k for k, v in cfg.items() if isinstance(v, DictConfig))


@dataclass
class ResumedConfig:
    """What :func:`resume_config` decided."""

    #: The configuration the resumed run continues with.
    cfg: DictConfig
    #: ``key -> (the run's value, the new one)`` for each change applied.
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    #: ``key -> default`` for keys the run's saved configuration lacks (added to the scripts
    #: after the run started), which take the script's default.
    filled: dict[str, Any] = field(default_factory=dict)


def resume_config(
    saved: DictConfig, requested: DictConfig, defaults: DictConfig, keys: Iterable[str]
) -> ResumedConfig:
    """The configuration a resumed run continues with.

    The run's saved configuration is the base. Of the ``keys`` the command line set (with
    their values in ``requested``), those equal to the run's change nothing, those
    :data:`RESUME_MAY_CHANGE` allows are applied, and any other one is an error naming the key,
    the run's value and the one asked for: the run would no longer be the run it was.

    Args:
        saved: the run's ``config.yaml``.
        requested: the configuration composed from the command line.
        defaults: the script's configuration without any override; it fills keys ``saved``
            lacks, and its sections must be the run's (the same script made the run).
        keys: the keys the command line set (see :func:`requested_keys`).
    """
    if _sections(saved) != _sections(defaults):
        raise ConfigError(
            f"that run was made by another script: its config (method {saved.get('method')}) "
            f"has the sections {', '.join(_sections(saved))}, this script's "
            f"{', '.join(_sections(defaults))}."
        )
    base_values, default_values = leaves(saved), leaves(defaults)
    unlocked = OmegaConf.create(OmegaConf.to_container(defaults, resolve=True))
    cfg = OmegaConf.merge(unlocked, saved)
    result = ResumedConfig(cfg)
    result.filled = {k: v for k, v in default_values.items() if k not in base_values}
    values, requested_values = leaves(cfg), leaves(requested)
    fixed = []
    for key in sorted(set(keys) - set(RESUME_IGNORES)):
        old, new = values.get(key), requested_values.get(key)
        if old == new:
            continue
        if _may_change(key):
            OmegaConf.update(cfg, key, new, force_add=True)
            result.changed[key] = (old, new)
        else:
            fixed.append(f"{key} was {_show(old)}, now {_show(new)}")
    if fixed:
        allowed = ", ".join(k + ("*" if k.endswith(".") else "") for k in RESUME_MAY_CHANGE)
        raise ConfigError(
            f"incompatible: {'; '.join(fixed)}. A resumed run keeps its configuration "
            f"(config.yaml in its directory); it may change only {allowed}. "
            "Start a new run to change anything else."
        )
    return result


def requested_keys(requested: DictConfig, hydra_cfg: DictConfig, defaults: DictConfig) -> set[str]:
    """The keys a Hydra command line set: each override's key (every key of the section it
    names, for a section or a config group such as ``env=...``), and every key whose composed
    value differs from the script's default (what a group such as ``preset=...`` changed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values, default_values = leaves(requested), leaves(defaults)
    keys = {k for k, v in values.items() if default_values.get(k, _ABSENT) != v}
    overrides = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    for override in overrides:
        key = override.key_or_group
        if key.startswith("hydra"):
            continue
        if isinstance(OmegaConf.select(requested, key), DictConfig):
            keys |= {k for k in values if k.startswith(f"{key}.")}
        elif key not in hydra_cfg.runtime.choices:
            keys.add(key)
    return keys
