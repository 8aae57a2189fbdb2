"""The construction settings of the package's modules: checked when given, kept when saved.

A chain's number of steps, its gates or an actor's prior change what a module computes, yet no
tensor holds them: two modules built with different ones can have the same state-dict keys and
shapes, and ``load_state_dict`` would report "All keys matched" and then act differently. A
module with :class:`SavedSettings` keeps its settings in its state dict, as the
``<prefix>_extra_state`` entry of :meth:`torch.nn.Module.get_extra_state`, and refuses a state
saved with other ones, naming each setting, its saved value and its own.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["SavedSettings", "check_integer", "check_number", "check_saved_settings"]

_EXTRA_STATE = "_extra_state"  # the key suffix torch.nn.Module gives get_extra_state's value


def check_integer(name: str, value: Any, minimum: int) -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum``; a ``ValueError`` naming the
    argument otherwise. A ``bool`` is no integer here: ``num_steps=True`` is a mistake, not
    ``K = 1``.

    Examples:
        >>> check_integer("num_steps", 5, 0)
        5
        >>> check_integer("num_steps", True, 0)
        Traceback (most recent call last):
        ...
        ValueError: num_steps must be an integer >= 0, got num_steps=True.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}.")
    return int(value)


def check_number(name: str, value: Any, *, positive: bool = True) -> float:
    """``value`` as a ``float`` if it is a finite real number ``> 0`` (``>= 0`` with
    ``positive=False``); a ``ValueError`` naming the argument otherwise (a ``bool`` included).

    Examples:
        >>> check_number("step_size", 0.05)
        0.05
        >>> check_number("exploration_noise", -0.1, positive=False)
        Traceback (most recent call last):
        ...
        ValueError: exploration_noise must be finite and >= 0, got exploration_noise=-0.1.
    """
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not (ok and (value > 0 if positive else value >= 0)):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {name}={value!r}.")
    return float(value)


class SavedSettings:
    """Mixin of an :class:`~torch.nn.Module` that keeps its :meth:`settings` in its state dict.

    ``state_dict()`` holds them as ``<prefix>_extra_state`` (a dict of Python scalars and
    strings, which ``torch.load(weights_only=True)`` reads back). ``load_state_dict`` checks
    them: a state saved with other settings raises a ``RuntimeError`` naming each one. Nothing is
    restored from them: they are how the module was built. A state without the entry (saved
    before the module had settings) is refused as a missing key by a strict load, and not
    checked by a non-strict one.

    Examples:
        >>> import torch
        >>> from torchrl_mcmc.mcmc import HamiltonianFlow
        >>> saved = HamiltonianFlow(2, num_steps=5).state_dict()
        >>> saved["_extra_state"]["num_steps"]
        5
        >>> HamiltonianFlow(2, num_steps=2).load_state_dict(saved)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        RuntimeError: cannot load ... HamiltonianFlow: ... num_steps is 5 in the state, 2 here...
    """

    def settings(self) -> dict[str, Any]:
        """What the module was built with that changes what it computes and that no tensor
        holds."""
        raise NotImplementedError

    def get_extra_state(self) -> dict[str, Any]:
        return self.settings()

    def set_extra_state(self, state: Any) -> None:
        """Checks the saved settings against this module's (see the class docstring)."""
        _raise_if_any(self, self._differences(state, ""))

    def _differences(self, saved: Any, where: str) -> list[str]:
        """One line per setting whose saved value differs from this module's."""
        prefix = f"{where}." if where else ""
        if not isinstance(saved, Mapping):
            return [f"{prefix}{_EXTRA_STATE} is {saved!r}, not the settings of a {_name(self)}"]
        own = self.settings()
        absent = object()
        problems = []
        for name in [*own, *(k for k in saved if k not in own)]:
            mine, theirs = own.get(name, absent), saved.get(name, absent)
            if mine != theirs:
                shown = [("absent" if v is absent else repr(v)) for v in (theirs, mine)]
                problems.append(f"{prefix}{name} is {shown[0]} in the state, {shown[1]} here")
        return problems


def check_saved_settings(module: nn.Module, state_dict: Mapping[str, Any], prefix: str) -> None:
    """Checks the saved settings of ``module`` and of every :class:`SavedSettings` module in it
    before anything is loaded: one ``RuntimeError`` naming every difference (by its key in the
    state dict, e.g. ``actor.flow.num_steps``), before a tensor is copied.

    Args:
        module: the module about to be loaded.
        state_dict: the state it is loaded from.
        prefix: ``module``'s prefix in ``state_dict`` (as ``_load_from_state_dict`` gets it).
    """
    problems = []
    for name, sub in module.named_modules():
        key = f"{prefix}{name}.{_EXTRA_STATE}" if name else f"{prefix}{_EXTRA_STATE}"
        if isinstance(sub, SavedSettings) and key in state_dict:
            problems += sub._differences(state_dict[key], f"{prefix}{name}".rstrip("."))
    _raise_if_any(module, problems)


def _name(module: Any) -> str:
    return type(module).__name__


def _raise_if_any(module: Any, problems: list[str]) -> None:
    if problems:
        raise RuntimeError(
            f"cannot load this state into the {_name(module)}: it was saved with other settings: "
            f"{'; '.join(problems)}. Build it with the saved settings."
        )
