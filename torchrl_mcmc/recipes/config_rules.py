"""What every value of the recipes' configurations may be.

:data:`CONFIG_RULES` holds one rule per key of ``config/*.yaml`` (every recipe; a section
that a recipe does not have is skipped), :data:`CROSS_RULES` the constraints between keys.
:func:`validate_config` checks them all in one pass and reports every bad value at once, each
with its key, its value and what is allowed, before a run creates anything; a key the recipe
does not have (a typo such as ``+hmc.num_step=3``) is one, named with the nearest key there is.
A new config key gets its rule here (``tests/test_config_rules.py`` fails for a key without
one). What a resumed run may change is :mod:`~torchrl_mcmc.recipes.resume`'s.

Values that each pass their rule can still make a run that cannot work here:
:func:`inspect_task` refuses a task the methods cannot train on (discrete or unbounded actions,
no flat observation vector), and :func:`memory_problems` sizes that cannot be allocated (a
replay buffer or a network larger than the machine's memory), both before anything is built.
"""

from __future__ import annotations

import difflib
import importlib.util
import itertools
import logging
import math
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torchrl.data import Bounded, TensorSpec
from torchrl.envs import EnvBase

from torchrl_mcmc.recipes.factories import ACTIVATIONS, KNOWN_ENVS, make_env, resolve_device

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A bad configuration value (or ``resume=``), caught before anything is created."""

    @classmethod
    def listing(cls, problems: Sequence[str]) -> ConfigError:
        """One error for ``problems``: the problem itself if there is one, else a count and
        one problem a line."""
        if len(problems) == 1:
            return cls(problems[0])
        return cls(f"{len(problems)} bad values:\n" + "\n".join(f"  {p}" for p in problems))


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
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
) -> Rule:
    """A finite real (an ``int`` will do) ``> above``, ``>= at_least``, ``<= at_most`` and
    ``< below``."""
    bounds = [
        f"> {above}" if above is not None else None,
        f">= {at_least}" if at_least is not None else None,
        f"<= {at_most}" if at_most is not None else None,
        f"< {below}" if below is not None else None,
    ]
    allowed = " and ".join(b for b in bounds if b)

    def rule(value: Any) -> str | None:
        ok = _is_number(value)
        ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
        ok = ok and (at_most is None or value <= at_most) and (below is None or value < below)
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


def folder_name(value: Any) -> str | None:
    """A name that becomes one folder of a path: non-empty, no separator, not ``.`` or ``..``."""
    ok = text(value) is None and value not in (".", "..")
    ok = ok and "/" not in value and "\\" not in value
    return None if ok else "must be a folder's name: non-empty, without / or \\, not . or .."


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


def float32_scale(value: Any) -> str | None:
    """A number > 0 that float32 holds, its reciprocal too: a step size or a temperature that
    the networks' float32 arithmetic turns neither into 0 nor into inf."""
    tiny = torch.finfo(torch.float32).tiny
    if _is_number(value) and tiny <= value <= 1 / tiny:
        return None
    return (
        f"must be a finite number in [{tiny:.2g}, {1 / tiny:.2g}] (> 0, and float32 holds it "
        "and its reciprocal)"
    )


# ---------------------------------------------------------------------------- the table
_positive = number(above=0)
_non_negative = number(at_least=0)

#: One rule per config key of the five recipes (a section a recipe lacks is skipped).
CONFIG_RULES: dict[str, Rule] = {
    # common.yaml
    "method": folder_name,  # a folder of the run directory's path
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
    # TorchRL SoftUpdate's eps: 1 would keep the target critics at their initial weights.
    "optim.polyak": number(at_least=0, below=1),
    "optim.loss_function": one_of("l2", "smooth_l1", "l1"),
    "network.hidden": widths,
    "network.policy_hidden": optional(widths),
    "network.activation": one_of(*ACTIVATIONS),
    # TorchRL's biased_softplus: the scale has a floor of 0.01 and its inverse softplus
    # overflows float32 above 88.
    "network.default_scale": number(above=0.01, at_most=88),
    "eval.interval_frames": integer(1),
    "eval.episodes": integer(1),
    "eval.video": flag,
    "checkpoint.interval_frames": integer(1),
    "checkpoint.keep": integer(1),
    "checkpoint.save_replay_buffer": flag,
    "guard.max_nonfinite_updates": integer(1),
    "logger.backend": logger_backend,
    "logger.exp_name": folder_name,
    "logger.project": text,
    # env/*.yaml
    "env.name": env_id,
    "env.max_episode_steps": integer(1),
    # hmc_sac.yaml
    "hmc.num_steps": integer(0),
    "hmc.step_size": float32_scale,
    "hmc.gated": flag,
    "hmc.gate_hidden": integer(1),
    "hmc.gate_state": flag,
    "hmc.lr": _positive,
    "hmc.update_mode": one_of("alternating", "joint"),
    "hmc.h_update_interval": integer(1),
    "hmc.prior": one_of("policy", "uniform"),
    "hmc.potential_critic": one_of("min", "first", "mean_std"),
    "hmc.pessimism": optional(_non_negative),
    "hmc.next_action": one_of("chain", "base"),
    "hmc.value_entropy": optional(one_of("none", "auxiliary")),
    "hmc.target_entropy": either("auto", number()),
    "hmc.alpha_init": float32_scale,
    # hmc_sac.yaml and ld_td3.yaml
    "pid.enabled": flag,
    "pid.target": _positive,
    "pid.kp": optional(_non_negative),
    "pid.ki": optional(_non_negative),
    "pid.kd": _non_negative,
    "pid.beta_init": float32_scale,
    "pid.beta_min": float32_scale,
    "pid.beta_max": float32_scale,
    "pid.iteration_updates": optional(integer(1)),
    # ld_td3.yaml
    "flow.num_layers": integer(0),
    "flow.step_size": float32_scale,
    "flow.hidden": integer(1),
    "flow.lr": _positive,
    "flow.update_mode": one_of("alternating", "joint"),
    "flow.potential_critic": one_of("min", "first", "mean_std"),
    "flow.pessimism": optional(_non_negative),
    # td3.yaml and ld_td3.yaml
    "td3.exploration_noise": _non_negative,
    "td3.policy_noise": _non_negative,
    "td3.noise_clip": _non_negative,
    "td3.policy_delay": integer(1),
    # sac.yaml
    "sac.alpha_init": float32_scale,
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


def _pessimism_needs_mean_std(potential_critic: str, pessimism: float | None) -> str | None:
    if potential_critic == "mean_std" or pessimism in (None, 1.0):
        return None
    return "pessimism is read only with potential_critic=mean_std (leave it null otherwise)"


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


def _applies(key: str, sections: Collection[str]) -> bool:
    """Top-level keys concern every recipe; a section's keys only recipes with that section."""
    return "." not in key or key.split(".", 1)[0] in sections


def config_problems(cfg: DictConfig, defaults: DictConfig | None = None) -> list[str]:
    """Every key of ``cfg`` the recipe does not have, and every value that breaks
    :data:`CONFIG_RULES` or :data:`CROSS_RULES`.

    Args:
        cfg: the configuration to check.
        defaults: the recipe's configuration without any override. Its keys are the recipe's
            and its sections say which rules apply. Without it, the keys of
            :data:`CONFIG_RULES` are known, and the sections of ``cfg`` say.
    """
    unresolvable = _unresolvable(cfg)
    if unresolvable:
        return unresolvable
    values = leaves(cfg)
    if defaults is None:
        known, sections = set(CONFIG_RULES), set(cfg)
    else:
        known, sections = set(leaves(defaults, resolve=False)), set(defaults)
    problems = [unknown_key_problem(k, v, known) for k, v in values.items() if k not in known]
    passed = set()
    for key, rule in CONFIG_RULES.items():
        if not _applies(key, sections):
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


def _unresolvable(cfg: DictConfig) -> list[str]:
    """Every value of ``cfg`` whose interpolation cannot be resolved (``${oc.env:UNSET}``, a
    key that does not exist): the key, the value as given and why."""
    problems = []
    for key, raw in leaves(cfg, resolve=False).items():
        try:
            OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except OmegaConfBaseException as err:
            why = str(err).splitlines()[0]
            problems.append(f"{key}={show_value(raw)}: cannot be resolved ({why})")
    return problems


def validate_config(cfg: DictConfig, defaults: DictConfig | None = None) -> None:
    """Raises a :class:`ConfigError` that lists every unknown key and bad value of ``cfg``
    (:func:`config_problems`: key, value, what is allowed); returns quietly if there is none."""
    problems = config_problems(cfg, defaults)
    if problems:
        raise ConfigError.listing(problems)


def leaves(cfg: DictConfig, resolve: bool = True) -> dict[str, Any]:
    """``{"a.b": value}`` for every value of ``cfg`` below dictionaries (a list is one value),
    as plain Python values, resolved unless ``resolve`` is false."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=resolve), "")
    return out


# ---------------------------------------------------------------------------- unknown keys
#: How alike a name and a valid one must be for the valid one to be offered in its place
#: (:func:`difflib.get_close_matches`' ratio): ``hmc.num_step`` and ``hmc.num_steps`` are 0.96,
#: ``hmc.nonexistent`` and ``hmc.next_action`` (no typo of it) 0.6.
_ALIKE = 0.75


def nearest(name: str, choices: Collection[str]) -> str | None:
    """The one of ``choices`` closest to ``name`` (:func:`difflib.get_close_matches`), if one
    is close enough to be what was meant."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=_ALIKE)
    return matches[0] if matches else None


def unknown_key_problem(key: str, value: Any, known: Collection[str]) -> str:
    """``key=value`` for a ``key`` not among the ``known`` ones: with the nearest known key,
    or else the keys of the section ``key`` is in (the top-level ones, for a section there is
    not)."""
    guess = nearest(key, known)
    if guess is not None:
        return f"{key}={show_value(value)}: no such key (did you mean {guess}?)"
    section = key.rpartition(".")[0]
    while section and not _names_below(section, known):
        section = section.rpartition(".")[0]
    names = ", ".join(_names_below(section, known))
    if section:
        return f"{key}={show_value(value)}: no such key (the keys of {section} are {names})"
    missing = f"there is no section {key.partition('.')[0]}; " if "." in key else ""
    return f"{key}={show_value(value)}: no such key ({missing}the top-level keys are {names})"


def _names_below(section: str, known: Collection[str]) -> list[str]:
    """The names one level below ``section`` (``""``: the top level) among the ``known``
    keys, a section's as ``name.*``."""
    prefix = f"{section}." if section else ""
    names = set()
    for key in known:
        if key.startswith(prefix):
            head, dot, _ = key[len(prefix) :].partition(".")
            names.add(head + (".*" if dot else ""))
    return sorted(names)


# ---------------------------------------------------------------------------- the task
#: What the methods' losses read of a transition, and so what the replay buffer stores: every
#: method's ``replay_keys`` (the ``in_keys`` of TorchRL's actor-critic losses).
REPLAY_KEYS = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
)

#: What the methods need of a task's actions, as the message of a task without them says it.
_BOUNDED_BOX = (
    "must be a task with continuous actions in a bounded box (a Gymnasium Box with finite low "
    "and high, into which the policies squash their actions), such as "
    f"{', '.join(KNOWN_ENVS)}"
)


#: Bytes TorchRL's ``TensorDictReplayBuffer`` stores with each transition: its index (int64).
_INDEX_BYTES = 8


@dataclass(frozen=True)
class TaskShape:
    """The dimensions of a task that a configuration's sizes multiply, read from the TorchRL
    specs of the env :func:`~torchrl_mcmc.recipes.factories.make_env` makes."""

    observation_dim: int
    action_dim: int
    #: Bytes of one transition in the replay buffer: :data:`REPLAY_KEYS` at the specs' dtypes,
    #: and the index the buffer keeps with it.
    transition_bytes: int


def inspect_task(cfg: DictConfig) -> TaskShape:
    """The shape of ``cfg.env.name``'s task, made as a run makes it.

    Raises a :class:`ConfigError` naming ``env.name`` for a task that cannot be made here (a
    missing dependency, say), or that the methods cannot train on: they need continuous actions
    in a bounded box (their policies squash actions into it) and one flat float observation
    vector. ``cfg``'s values are checked already (:func:`validate_config`).
    """
    shown = f"env.name={show_value(cfg.env.name)}"
    try:
        env = make_env(cfg)
    except Exception as err:  # a missing dependency, a broken env: whatever stops making it
        reason = next(iter(str(err).splitlines()), "")
        raise ConfigError(
            f"{shown}: cannot be made here ({type(err).__name__}: {reason})"
        ) from None
    try:
        problems = _task_problems(env)
        if problems:
            raise ConfigError(f"{shown}: {'; '.join(problems)}")
        return TaskShape(
            observation_dim=env.observation_spec["observation"].shape[-1],
            action_dim=env.action_spec.shape[-1],
            transition_bytes=_transition_bytes(env),
        )
    finally:
        env.close()


def _task_problems(env: EnvBase) -> list[str]:
    """Why the methods cannot train on ``env``, if they cannot."""
    problems = []
    action = env.action_spec
    if action.domain != "continuous":
        problems.append(f"its actions are discrete ({type(action).__name__}); {_BOUNDED_BOX}")
    elif not _bounded(action):
        problems.append(
            f"its actions are unbounded (a Box without finite low and high); {_BOUNDED_BOX}"
        )
    elif action.ndim != 1:
        problems.append(f"its actions have the shape {tuple(action.shape)}; {_BOUNDED_BOX}")
    observation = env.observation_spec.get("observation", None)
    flat = observation is not None and len(observation.shape) == 1
    if not (flat and observation.dtype is not None and observation.dtype.is_floating_point):
        shown = "none" if observation is None else f"{type(observation).__name__}"
        shown += "" if observation is None else f" of shape {tuple(observation.shape)}"
        problems.append(
            f"its observation is {shown}; must be a task that observes one flat vector of floats"
        )
    return problems


def _bounded(spec: TensorSpec) -> bool:
    """Whether a continuous spec has finite bounds (TorchRL writes a Box's infinite ones as the
    dtype's largest numbers)."""
    if not isinstance(spec, Bounded):
        return False
    largest = torch.finfo(spec.dtype).max
    return bool((spec.space.low.abs() < largest).all() and (spec.space.high.abs() < largest).all())


def _transition_bytes(env: EnvBase) -> int:
    """Bytes of one transition of ``env`` in the replay buffer: :data:`REPLAY_KEYS`, each
    ``("next", key)`` as large as ``key``, and its index."""
    specs = {
        "observation": env.observation_spec["observation"],
        "action": env.action_spec,
        "reward": env.reward_spec,
        "done": env.full_done_spec["done"],
        "terminated": env.full_done_spec["terminated"],
    }
    parts = [specs[key[-1] if isinstance(key, tuple) else key] for key in REPLAY_KEYS]
    return _INDEX_BYTES + sum(spec.shape.numel() * spec.dtype.itemsize for spec in parts)


# ---------------------------------------------------------------------------- the machine
#: Bytes of a float32, what the networks and the replay buffer's floats are.
_FLOAT = 4
#: A floor on what each of the collector's worker processes holds (a Python process that has
#: imported torch holds more).
_WORKER_BYTES = 100 * 2**20


@dataclass(frozen=True)
class MemoryUse:
    """Memory a run needs, at least, for one of its parts: what it is, the keys that size it."""

    what: str
    keys: tuple[str, ...]
    nbytes: int
    #: On the training device (``device``); else in the machine's RAM.
    on_device: bool = True


@dataclass(frozen=True)
class Memory:
    """The memory of a device: what a run can never exceed there, and what is free now."""

    where: str
    limit: int
    free: int


def _mlp_parameters(in_features: int, widths: Sequence[int], out_features: int) -> int:
    """The weights and biases of an MLP ``in_features -> widths... -> out_features``."""
    sizes = [in_features, *widths, out_features]
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def memory_uses(cfg: DictConfig, task: TaskShape) -> list[MemoryUse]:
    """Lower bounds of the memory a run of ``cfg`` on ``task`` needs, one per part that its
    sizes can make large.

    Each counts only what that part must hold, float32 (every method has at least these): a
    trained network its parameters, their gradients and Adam's two moments; the twin critics
    their targets too; the replay buffer ``replay.size`` transitions of :data:`REPLAY_KEYS`;
    a minibatch its transitions and one critic's activations on them; a chain (HMC's leapfrog
    steps, the Langevin flow's layers, best-of-N's candidates) the critic's first activations
    at each of its steps, which its gradient keeps.
    """
    obs, act, row = task.observation_dim, task.action_dim, task.transition_bytes
    hidden = list(cfg.network.hidden)
    own_policy = cfg.network.policy_hidden is not None
    policy_hidden = list(cfg.network.policy_hidden) if own_policy else hidden
    policy_keys = ("network.policy_hidden",) if own_policy else ("network.hidden",)
    batch = cfg.replay.batch_size
    first = hidden[0] if hidden else 1  # the width of a critic's first activations
    trained, target = 4 * _FLOAT, _FLOAT  # a trained parameter: itself, gradient, two moments
    critic = _mlp_parameters(obs + act, hidden, 1)
    uses = [
        MemoryUse("the policy", policy_keys, trained * _mlp_parameters(obs, policy_hidden, act)),
        MemoryUse("the twin critics", ("network.hidden",), 2 * (trained + target) * critic),
        MemoryUse("the replay buffer", ("replay.size",), cfg.replay.size * row),
        MemoryUse("a minibatch", ("replay.batch_size",), batch * row),
        MemoryUse(
            "a critic's activations on a minibatch",
            ("replay.batch_size", "network.hidden"),
            batch * (sum(hidden) + 1) * _FLOAT,
        ),
        MemoryUse(
            "a collected batch",
            ("collector.frames_per_batch",),
            cfg.collector.frames_per_batch * row,
        ),
    ]
    if "hmc" in cfg:
        if cfg.hmc.gated:
            gates = 2 * trained * cfg.hmc.gate_hidden**2
            uses.append(MemoryUse("the HMC gates", ("hmc.gate_hidden",), gates))
        chain = cfg.hmc.num_steps * batch * first * _FLOAT
        uses.append(MemoryUse("the HMC chain", ("hmc.num_steps",), chain))
    if "flow" in cfg:
        layers, width = cfg.flow.num_layers, cfg.flow.hidden
        flow = layers * ((trained + target) * width**2 + batch * (width + first) * _FLOAT)
        uses.append(MemoryUse("the Langevin flow", ("flow.num_layers", "flow.hidden"), flow))
    if "bon" in cfg:
        candidates = cfg.bon.num_samples * batch * first * _FLOAT
        uses.append(MemoryUse("the best-of-N candidates", ("bon.num_samples",), candidates))
    if cfg.collector.num_workers > 1:
        workers = cfg.collector.num_workers * _WORKER_BYTES
        uses.append(
            MemoryUse("the collector's workers", ("collector.num_workers",), workers, False)
        )
    return uses


def machine_memory() -> Memory:
    """This machine's RAM: its size (or the cgroup's limit, if lower) is the limit, and
    ``MemAvailable`` what is free."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cgroup = Path("/sys/fs/cgroup/memory.max")  # cgroup v2; "max" when there is no limit
    if cgroup.is_file() and (text := cgroup.read_text().strip()).isdigit():
        limit = min(limit, int(text))
    free = limit
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = min(limit, int(line.split()[1]) * 1024)  # in kB
    return Memory("this machine's memory", limit, free)


def device_memory(device: torch.device) -> Memory:
    """The memory of the training ``device``: a GPU's free memory (it cannot swap: what is free
    is the limit), the machine's RAM for the CPU (:func:`machine_memory`)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return Memory(f"the free memory of {device}", free, free)
    return machine_memory()


def memory_problems(
    cfg: DictConfig, task: TaskShape, device: Memory | None = None, ram: Memory | None = None
) -> list[str]:
    """The sizes of ``cfg`` that cannot be allocated: a problem naming the keys, the memory
    they need (:func:`memory_uses`) and the memory there is, where what the training device
    holds exceeds its limit (and for a CUDA device, where the machine's RAM cannot hold the
    collector's workers). A need above what is free now, but within the limit, is a warning.

    Args:
        cfg: a checked configuration.
        task: its task's shape (:func:`inspect_task`).
        device: the training device's memory; by default, :func:`device_memory` of ``cfg.device``.
        ram: the machine's RAM; by default, :func:`machine_memory`.
    """
    ram = machine_memory() if ram is None else ram
    if device is None:
        training_device = resolve_device(cfg.device)
        device = device_memory(training_device) if training_device.type == "cuda" else ram
    uses = memory_uses(cfg, task)
    if device is ram:
        groups = [(ram, uses)]
    else:
        groups = [
            (device, [u for u in uses if u.on_device]),
            (ram, [u for u in uses if not u.on_device]),
        ]
    problems = []
    for memory, group in groups:
        need = sum(u.nbytes for u in group)
        if need > memory.limit:
            problems.append(_too_large(cfg, group, need, memory))
        elif need > memory.free:
            logger.warning(
                "the run needs at least %s of %s, more than the %s free now: it fits only if "
                "other processes free theirs",
                _size(need),
                memory.where,
                _size(memory.free),
            )
    return problems


def _too_large(cfg: DictConfig, uses: list[MemoryUse], need: int, memory: Memory) -> str:
    """The problem of ``uses`` that need more than ``memory``'s limit: each that alone does,
    or else the largest ones that together do."""
    ordered = sorted(uses, key=lambda u: u.nbytes, reverse=True)
    culprits = [u for u in ordered if u.nbytes > memory.limit]
    if not culprits:
        total = 0
        for use in ordered:
            culprits.append(use)
            total += use.nbytes
            if total > memory.limit:
                break
    keys = dict.fromkeys(k for u in culprits for k in u.keys)
    shown = ", ".join(f"{k}={show_value(OmegaConf.select(cfg, k))}" for k in keys)
    parts = ", ".join(f"{u.what} {_size(u.nbytes)}" for u in culprits)
    return (
        f"{shown}: the run needs at least {_size(need)} ({parts}), more than the "
        f"{_size(memory.limit)} of {memory.where}; must be small enough to fit in it"
    )


def _size(nbytes: int) -> str:
    """``nbytes`` in binary units: ``1.5 GiB``."""
    value, units = float(nbytes), ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB")
    for unit in units[:-1]:
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {units[-1]}"
