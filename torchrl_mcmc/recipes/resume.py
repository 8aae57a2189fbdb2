"""What a resumed run continues with: its own saved configuration (:func:`load_run_config`),
merged over the recipe's defaults, changed only where :data:`RESUME_MAY_CHANGE` allows; and
whether its checkpoint fits the networks that configuration builds
(:func:`checkpoint_mismatches`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from torchrl_mcmc.recipes.checkpoint import atomic_write
from torchrl_mcmc.recipes.config_rules import ConfigError, leaves, show_value

logger = logging.getLogger(__name__)

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
    "guard.",  # when a diverging run gives up
)
#: Keys a resume ignores: where a new run would go, and the resume itself.
RESUME_IGNORES = ("resume", "run_root")


def _may_change(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE)


#: The sections every recipe shares (``config/common.yaml``): a run made before one of them
#: was added lacks it, and takes its defaults as for any missing key.
COMMON_SECTIONS = frozenset(
    k
    for k, v in OmegaConf.load(Path(__file__).resolve().parent / "config" / "common.yaml").items()
    if isinstance(v, DictConfig) and k != "hydra"
)


def _sections(cfg: DictConfig) -> list[str]:
    return sorted(k for k, v in cfg.items() if isinstance(v, DictConfig))


@dataclass
class ResumedConfig:
    """What :func:`resume_config` decided."""

    #: The configuration the resumed run continues with.
    cfg: DictConfig
    #: ``key -> (the run's value, the new one)`` for each change applied.
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    #: ``key -> default`` for keys the run's saved configuration lacks (added to the recipe
    #: after the run started), which take the recipe's default.
    filled: dict[str, Any] = field(default_factory=dict)


def load_run_config(path: Path) -> DictConfig:
    """A run's saved ``config.yaml``, read back; raises a :class:`ConfigError` naming ``path``
    for a file that is no run's configuration: unreadable, empty, not YAML, not a mapping,
    without the ``method`` every recipe's has, or with an interpolation that cannot be
    resolved."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} cannot be read ({type(err).__name__}: {err}).") from None
    if not text.strip():
        raise ConfigError(f"{path} is empty: it is no run's configuration.")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split())
        raise ConfigError(f"{path} is not YAML: {reason}.") from None
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", type(None): "null"}.get(type(data), "a value")
        raise ConfigError(f"{path} holds {kind}, not a run's configuration (a mapping).")
    try:
        saved = OmegaConf.create(text)  # OmegaConf's YAML, as it was saved (1e-4 a float)
        OmegaConf.to_container(saved, resolve=True)
    except (yaml.YAMLError, OmegaConfBaseException) as err:
        reason = " ".join(str(err).split())
        raise ConfigError(f"{path} is no run's configuration: {reason}.") from None
    if not isinstance(saved.get("method"), str):
        raise ConfigError(f"{path} has no method: it is not a configuration these recipes saved.")
    return saved


def resume_config(
    saved: DictConfig, requested: DictConfig, defaults: DictConfig, keys: Iterable[str]
) -> ResumedConfig:
    """The configuration a resumed run continues with.

    The run's saved configuration, merged over the recipe's defaults, is the base: a key the
    run's ``config.yaml`` lacks (one added since) takes its default, the same way for every
    key, and is listed in :attr:`ResumedConfig.filled`. Of the ``keys`` the command line set (with
    their values in ``requested``), those equal to the run's change nothing, those
    :data:`RESUME_MAY_CHANGE` allows are applied, and any other one is an error naming the key,
    the run's value and the one asked for: the run would no longer be the run it was.

    Args:
        saved: the run's ``config.yaml``.
        requested: the configuration composed from the command line.
        defaults: the recipe's configuration without any override; it fills keys ``saved``
            lacks, and its own sections must be the run's (the same recipe made the run; a
            section of :data:`COMMON_SECTIONS` the run lacks takes its defaults).
        keys: the keys the command line set (see :func:`requested_keys`).
    """
    # Sections only one recipe has (``hmc``, ``bon``...) tell the script that made the run; a
    # shared section the run lacks was added since, and is filled below like a missing key.
    if (set(_sections(saved)) ^ set(_sections(defaults))) - COMMON_SECTIONS:
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
            fixed.append(f"{key} was {show_value(old)}, now {show_value(new)}")
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
    value differs from the recipe's default (what a group such as ``preset=...`` changed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values, default_values = leaves(requested), leaves(defaults)
    keys = {k for k, v in values.items() if k not in default_values or default_values[k] != v}
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


def record_resume(run_dir: Path, resumed: ResumedConfig) -> None:
    """Logs what a resume changed in the run's configuration, and writes the result to its
    ``config.yaml``, so that the next plain ``resume=<run dir>`` continues with it (a larger
    budget, say)."""
    for key, default in resumed.filled.items():
        logger.info("resume: config.yaml has no %s; the recipe's default %r applies", key, default)
    for key, (old, new) in resumed.changed.items():
        logger.info("resume: %s %r -> %r", key, old, new)
    if resumed.filled or resumed.changed:
        saved = OmegaConf.merge(resumed.cfg, {"resume": None})
        atomic_write(run_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(saved).encode()))


def checkpoint_mismatches(saved: Any, built: dict[str, Any], limit: int = 3) -> list[str]:
    """How a checkpoint's method state ``saved`` differs from the state ``built``, that of the
    method its run's configuration builds: the parts one has and the other lacks, and the
    parameters and buffers of the loss module (its networks) whose shapes differ. Empty when
    ``saved`` loads into that method.

    Args:
        saved: the checkpoint's ``"method"`` entry.
        built: ``Method.state_dict()`` of a method built from the configuration.
        limit: the most differences listed; more are counted.
    """
    if not isinstance(saved, dict) or not isinstance(saved.get("loss"), dict):
        return ["it holds no method state with a loss module (not a checkpoint of these recipes)"]
    found = []
    for part in sorted(built.keys() - saved.keys()):
        found.append(f"it lacks the method's {part!r}")
    for part in sorted(saved.keys() - built.keys()):
        found.append(f"it has a {part!r} this method does not")
    for part in sorted(built.keys() & saved.keys()):
        if saved[part] is None and built[part] is not None:
            found.append(f"its {part!r} is empty, the method's is not")
        elif saved[part] is not None and built[part] is None:
            found.append(f"its {part!r} is set, the method's is empty")
    # The loss's entries: its networks' tensors, compared by shape, and the modules' extra
    # states (an actor's structural settings: K, gates, prior...), compared by value.
    saved_loss, built_loss = saved["loss"], built["loss"]
    for key in sorted(built_loss.keys() - saved_loss.keys(), key=_weights_first):
        found.append(f"loss.{key} is missing from it")
    for key in sorted(saved_loss.keys() - built_loss.keys(), key=_weights_first):
        found.append(f"loss.{key} is in it, not in the networks built")
    for key in sorted(built_loss.keys() & saved_loss.keys(), key=_weights_first):
        old, new = saved_loss[key], built_loss[key]
        if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor):
            if old.shape != new.shape:
                found.append(f"loss.{key} is {tuple(old.shape)} in it, {tuple(new.shape)} built")
        elif isinstance(old, torch.Tensor) or isinstance(new, torch.Tensor) or old != new:
            found.append(f"loss.{key} is {old!r} in it, {new!r} built")
    if len(found) > limit:
        found = [*found[:limit], f"{len(found) - limit} more"]
    return found


def _weights_first(key: str) -> tuple[bool, str]:
    """Sorts a layer's weight before its bias: its shape shows both sizes."""
    return not key.endswith("weight"), key
