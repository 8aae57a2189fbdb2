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

import torch
from torch import nn

__all__ = [
    "SavedSettings",
    "check_integer",
    "check_number",
    "check_positive_float",
    "check_saved_settings",
]

_EXTRA_STATE = "_extra_state"  # the key suffix torch.nn.Module gives get_extra_state's value


def check_integer(name: str, value: Any, minimum: int) -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum``; an error naming the argument
    otherwise: a ``TypeError`` for a non-integer, a ``bool`` included (``num_steps=True`` is
    a mistake, not ``K = 1``), a ``ValueError`` for an integer below ``minimum``.

    Examples:
        >>> check_integer("num_steps", 5, 0)
        5
        >>> check_integer("num_steps", -1, 0)
        Traceback (most recent call last):
        ...
        ValueError: num_steps must be an integer >= 0, got num_steps=-1.
        >>> check_integer("num_steps", True, 0)
        Traceback (most recent call last):
        ...
        TypeError: num_steps must be an integer >= 0, got num_steps=True (a bool).
    """
    message = f"{name} must be an integer >= {minimum}, got {name}={value!r}."
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{message[:-1]} (a {type(value).__name__}).")
    if value < minimum:
        raise ValueError(message)
    return int(value)


def check_number(name: str, value: Any, *, positive: bool | None = True) -> float:
    """``value`` as a ``float`` if it is a finite real number ``> 0`` (``>= 0`` with
    ``positive=False``, of any sign with ``positive=None``); an error naming the argument
    otherwise: a ``TypeError`` for a non-number, a ``bool`` included, a ``ValueError`` for a
    number out of range.

    Examples:
        >>> check_number("step_size", 0.05)
        0.05
        >>> check_number("exploration_noise", -0.1, positive=False)
        Traceback (most recent call last):
        ...
        ValueError: exploration_noise must be finite and >= 0, got exploration_noise=-0.1.
        >>> check_number("noise_clip", True, positive=False)
        Traceback (most recent call last):
        ...
        TypeError: noise_clip must be finite and >= 0, got noise_clip=True (a bool, not a number).
    """
    bound = {True: " and > 0", False: " and >= 0", None: ""}[positive]
    message = f"{name} must be finite{bound}, got {name}={value!r}."
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{message[:-1]} (a {type(value).__name__}, not a number).")
    in_range = {True: value > 0, False: value >= 0, None: True}[positive]
    if not (math.isfinite(value) and in_range):
        raise ValueError(message)
    return float(value)


def check_positive_float(name: str, value: Any, *, reciprocal: bool = False) -> float:
    """``value`` as a ``float`` if it passes :func:`check_number` (finite, ``> 0``) and the
    default dtype (``float32``) holds it as a finite, non-zero number, both as itself and as
    ``exp(log value)``: the two ways the package stores a positive setting (``beta``; the step
    sizes and ``log alpha``). Without ``reciprocal`` it must be a normal number (``>=
    1.18e-38`` in ``float32``); with ``reciprocal=True`` its reciprocal must be finite instead
    (``Q / beta`` enters the potential; ``>= 2.94e-39``). A ``ValueError`` naming the argument,
    its value and the range allowed otherwise.

    In ``float32``, ``1e-50`` is ``0`` (a step size that never moves the chain, a temperature
    whose ``1 / beta`` is infinite) and ``1e39`` is ``inf``.

    Examples:
        >>> check_positive_float("step_size", 0.05)
        0.05
        >>> check_positive_float("step_size", 1e-50)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: step_size=1e-50 is too small: it is 0.0 in torch.float32; step_size must lie...
        >>> check_positive_float("beta", 1e-40, reciprocal=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: beta=1e-40 is too small: 1 / beta overflows torch.float32; beta must lie...
    """
    value = check_number(name, value)
    dtype = torch.get_default_dtype()
    info = torch.finfo(dtype)
    # The smallest value allowed: 1 / max (subnormal), or the smallest normal number (a
    # subnormal step size is as good as 0 and loses its precision).
    low = 1.0 / info.max if reciprocal else info.smallest_normal
    allowed = f"{name} must lie between {low:.3g} and {info.max:.3g}"
    stored = torch.stack(
        [torch.tensor(value, dtype=dtype), torch.tensor(math.log(value), dtype=dtype).exp()]
    )
    if not stored.isfinite().all():
        raise ValueError(f"{name}={value!r} is too large: it is inf in {dtype}; {allowed}.")
    if reciprocal:
        if not stored.reciprocal().isfinite().all():
            raise ValueError(
                f"{name}={value!r} is too small: 1 / {name} overflows {dtype}; {allowed}."
            )
    elif not (stored >= info.smallest_normal).all():
        raise ValueError(
            f"{name}={value!r} is too small: it is {stored.min().item()!r} in {dtype}; {allowed}."
        )
    return value


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
