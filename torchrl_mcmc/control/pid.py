"""PID control of the KL multiplier ``beta`` (paper §4.1, docs/method.md §1.3).

The policy objectives trade the critic's value against a distance to the previous policy,
weighted by ``beta``. The paper does not fix ``beta``: it treats policy optimisation as a
first-order system whose output is the measured distance ``D`` and steers ``beta`` with a PID
rule so that ``D`` tracks a threshold (``target``). Once per policy iteration:

.. code-block:: text

    delta = D - target
    deriv = D - D_prev                  (0 on the very first update: there is no D_prev)
    I     = max(0, I + delta)
    beta  = max(0, kp * delta + ki * I + kd * deriv)
    beta  = clamp(beta, beta_min, beta_max)

Two departures from the paper, both deliberate:

* **The clamp.** The paper's rule can return ``beta = 0``, and the HMC potential divides the
  critic by ``beta``. ``beta_min > 0`` keeps ``Q / beta`` finite; ``beta_max`` keeps the
  policy from freezing. Both are configurable.
* **The integral starts at** ``beta_init / ki``. The rule is positional: with ``I = 0`` the
  first update replaces ``beta_init`` by ``kp * delta`` (plus ``ki * delta``), which is ``<= 0``
  whenever the distance starts below the target. In a trial run that sent ``beta`` to its
  floor on the first update, and the chain, now driven by ``Q / beta_min``, blew the distance
  up by three orders of magnitude. Starting the integral where ``ki * I = beta_init`` makes the
  first update a small correction of ``beta_init`` instead of a reset.

The rule itself is implemented exactly as written above, so its known behaviour comes along:
the integral only floors at 0 and is not frozen while the clamp binds (no anti-windup), so after
a long stretch at ``beta_max`` it takes as many iterations below target to come back.

This module is plain Python + torch, free of TorchRL: use it in any loop. The TorchRL trainer
edge lives in :mod:`torchrl_mcmc.control.hooks`.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["PIDController", "distance_as_float"]

logger = logging.getLogger(__name__)

# Default gains are *relative*: the distance's scale grows with the action dimension and the
# chain length K (a log-density ratio summed over dimensions, or a norm in action space), so
# no absolute number suits every task. Expressed per unit of ``target``, a distance twice the
# target (delta = target) moves beta by 20% of beta_init through the proportional term at once
# and by 5% of beta_init per iteration through the integral term: a gentle controller that a
# user tightens by passing explicit gains.
_DEFAULT_KP_PER_TARGET = 0.2
_DEFAULT_KI_PER_TARGET = 0.05
# The derivative of a minibatch estimate mostly amplifies its noise; off unless asked for.
_DEFAULT_KD = 0.0
# Bounds two orders of magnitude either side of the starting point.
_DEFAULT_BETA_RANGE = 100.0


def _real(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise if it is not a real number."""
    # bool is an int subclass; `kp=True` is almost certainly a mistake, not a gain of 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    return float(value)


def distance_as_float(distance: float | Tensor) -> float:
    """Convert a distance (python number or one-element tensor) to a finite float, or raise.

    What :meth:`PIDController.update` and :class:`~torchrl_mcmc.control.hooks.PIDBetaHook`
    accept as a measurement, checked the same way in both before any state changes.
    """
    if isinstance(distance, Tensor):
        if distance.numel() != 1:
            raise ValueError(
                "distance must be a scalar (a tensor with exactly one element), got a tensor "
                f"of shape {tuple(distance.shape)}."
            )
        # detach: the controller is outside the graph; .item() syncs once per policy iteration.
        value = float(distance.detach().item())
    else:
        value = _real("distance", distance)
    if not math.isfinite(value):
        raise ValueError(
            f"distance must be finite, got {value!r}; the PID state was left unchanged "
            "(a diverging chain or a NaN loss upstream is the usual cause)."
        )
    return value


class PIDController:
    """PID controller of the KL multiplier ``beta`` (paper §4.1, with a clamp and a warm start).

    Call :meth:`update` once per policy iteration (once per collected batch) with the mean
    policy distance measured over that iteration's optimisation steps; it returns the new
    ``beta``. The rule, exactly:

    .. code-block:: text

        delta = D - target
        deriv = D - D_prev      (deriv = 0 on the first update, since there is no D_prev)
        I     = max(0, I + delta)
        beta  = clamp(max(0, kp * delta + ki * I + kd * deriv), beta_min, beta_max)

    The integral starts at ``beta_init / ki`` (at 0 when ``ki == 0``), so that a first update
    at ``D == target`` keeps ``beta == beta_init`` (up to floating-point rounding of
    ``ki * (beta_init / ki)``) instead of resetting it to ``kp * delta``; see the module
    docstring for why. While the clamp binds, the integral keeps accumulating (the paper's
    rule has no anti-windup).

    In a plain training loop with a loss that keeps ``beta`` as a tensor buffer, the whole
    integration is one line per policy iteration::

        loss.beta = pid.update(mean_distance)

    With a TorchRL :class:`~torchrl.trainers.Trainer`, use
    :class:`~torchrl_mcmc.control.hooks.PIDBetaHook` instead.

    The default gains are relative to ``target`` because the distance's scale grows with the
    action dimension and the chain length; they are a gentle starting point, pass explicit
    gains to tune.

    Args:
        target: the distance threshold ``epsilon`` the controller steers ``D`` to. Finite, > 0.

    Keyword Args:
        kp: proportional gain (finite, >= 0). Default ``0.2 * beta_init / target``.
        ki: integral gain (finite, >= 0). Default ``0.05 * beta_init / target``.
        kd: derivative gain (finite, >= 0). Default ``0.0``: the derivative of a noisy
            minibatch estimate mostly amplifies noise.
        beta_init: the multiplier before any update. Default ``1.0``.
        beta_min: lower clamp, must be > 0 so ``Q / beta`` stays finite. Default
            ``beta_init / 100``.
        beta_max: upper clamp. Default ``100 * beta_init``.

    Raises:
        ValueError: if ``target`` is not finite and > 0, a gain is negative or not finite, or
            ``0 < beta_min <= beta_init <= beta_max`` (all finite) does not hold.
        TypeError: if an argument is not a real number.

    Examples:
        >>> config = dict(target=1.0, kp=0.5, ki=0.25, kd=0.5, beta_min=0.1, beta_max=10.0)
        >>> pid = PIDController(**config)  # beta_init defaults to 1.0
        >>> pid.beta, pid.integral  # the integral starts at beta_init / ki
        (1.0, 4.0)
        >>> pid.update(1.0)  # on target, no derivative yet: beta stays at beta_init
        1.0
        >>> pid.update(3.0)  # 0.5 * 2 + 0.25 * 6 + 0.5 * 2
        3.5
        >>> pid.update(2.0)  # 0.5 * 1 + 0.25 * 7 + 0.5 * (-1)
        1.75
        >>> pid.update(100.0)  # 49.5 + 26.5 + 49 = 125, clamped to beta_max
        10.0
        >>> assert pid.num_updates == 4 and pid.integral == 106.0
        >>> fresh = PIDController(**config)  # e.g. when resuming from a checkpoint
        >>> fresh.load_state_dict(pid.state_dict())
        >>> assert fresh.beta == pid.beta == 10.0 and fresh.prev_distance == 100.0
    """

    def __init__(
        self,
        target: float,
        *,
        kp: float | None = None,
        ki: float | None = None,
        kd: float = _DEFAULT_KD,
        beta_init: float = 1.0,
        beta_min: float | None = None,
        beta_max: float | None = None,
    ) -> None:
        target = _real("target", target)
        if not (math.isfinite(target) and target > 0):
            raise ValueError(f"target must be a finite number > 0, got {target!r}.")
        beta_init = _real("beta_init", beta_init)
        if not (math.isfinite(beta_init) and beta_init > 0):
            raise ValueError(f"beta_init must be a finite number > 0, got {beta_init!r}.")

        if kp is None:
            kp = _DEFAULT_KP_PER_TARGET * beta_init / target
        if ki is None:
            ki = _DEFAULT_KI_PER_TARGET * beta_init / target
        gains = {"kp": _real("kp", kp), "ki": _real("ki", ki), "kd": _real("kd", kd)}
        for name, gain in gains.items():
            if not (math.isfinite(gain) and gain >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {gain!r}.")

        beta_min = beta_init / _DEFAULT_BETA_RANGE if beta_min is None else beta_min
        beta_max = beta_init * _DEFAULT_BETA_RANGE if beta_max is None else beta_max
        beta_min = _real("beta_min", beta_min)
        beta_max = _real("beta_max", beta_max)
        for name, value in (("beta_min", beta_min), ("beta_max", beta_max)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}.")
        # beta_min > 0 is the point of the clamp: the HMC potential divides Q by beta.
        if not (0 < beta_min <= beta_init <= beta_max):
            raise ValueError(
                "need 0 < beta_min <= beta_init <= beta_max, got "
                f"beta_min={beta_min!r}, beta_init={beta_init!r}, beta_max={beta_max!r}."
            )
        if gains["kp"] == gains["ki"] == gains["kd"] == 0:
            logger.warning(
                "PIDController with kp = ki = kd = 0: every update sets beta to beta_min=%g.",
                beta_min,
            )

        self._target = target
        self._kp, self._ki, self._kd = gains["kp"], gains["ki"], gains["kd"]
        self._beta_init = beta_init
        self._beta_min = beta_min
        self._beta_max = beta_max
        self.reset()

    # ----------------------------------------------------------------------------- config
    # Read-only: the integral's starting point depends on ki and beta_init, so changing a gain
    # on a live controller would silently move beta. Build a new controller instead.
    @property
    def target(self) -> float:
        """The distance threshold ``epsilon``."""
        return self._target

    @property
    def kp(self) -> float:
        """Proportional gain."""
        return self._kp

    @property
    def ki(self) -> float:
        """Integral gain."""
        return self._ki

    @property
    def kd(self) -> float:
        """Derivative gain."""
        return self._kd

    @property
    def beta_init(self) -> float:
        """The multiplier before any update (and after :meth:`reset`)."""
        return self._beta_init

    @property
    def beta_min(self) -> float:
        """Lower clamp of ``beta``."""
        return self._beta_min

    @property
    def beta_max(self) -> float:
        """Upper clamp of ``beta``."""
        return self._beta_max

    # ------------------------------------------------------------------------------ state
    @property
    def beta(self) -> float:
        """The current multiplier: ``beta_init`` before the first update."""
        return self._beta

    @property
    def integral(self) -> float:
        """The integral term ``I`` (always >= 0)."""
        return self._integral

    @property
    def prev_distance(self) -> float | None:
        """The distance fed to the last update, ``None`` before the first one."""
        return self._prev_distance

    @property
    def num_updates(self) -> int:
        """How many updates the controller has applied."""
        return self._num_updates

    def _initial_integral(self) -> float:
        # Warm start: ki * I == beta_init, so the first update corrects beta_init rather than
        # replacing it (docs/method.md §1.3). With ki == 0 the integral cannot carry beta:
        # start at 0.
        return self._beta_init / self._ki if self._ki > 0 else 0.0

    def reset(self) -> None:
        """Return to the state at construction: ``beta = beta_init``, integral warm-started."""
        self._beta = self._beta_init
        self._integral = self._initial_integral()
        self._prev_distance: float | None = None
        self._num_updates = 0

    def update(self, distance: float | Tensor) -> float:
        """Apply one PID step with this policy iteration's distance and return the new beta.

        Args:
            distance: the mean policy distance ``D`` over the iteration, a python number or a
                one-element tensor (it is detached; on CUDA this syncs once per call).

        Returns:
            The new ``beta``, clamped to ``[beta_min, beta_max]``.

        Raises:
            ValueError: if ``distance`` is NaN or infinite, or a tensor with ``numel() != 1``;
                the controller's state is left unchanged.
            TypeError: if ``distance`` is neither a real number nor a tensor.
        """
        # Validate before touching any state, so a bad measurement cannot corrupt the controller.
        d = distance_as_float(distance)
        delta = d - self._target
        deriv = 0.0 if self._prev_distance is None else d - self._prev_distance
        integral = max(0.0, self._integral + delta)
        raw = max(0.0, self._kp * delta + self._ki * integral + self._kd * deriv)
        beta = min(max(raw, self._beta_min), self._beta_max)

        self._integral = integral
        self._prev_distance = d
        self._beta = beta
        self._num_updates += 1
        if raw != beta:
            logger.debug(
                "PID beta %g clamped to %g (bounds [%g, %g]).",
                raw,
                beta,
                self._beta_min,
                self._beta_max,
            )
        logger.debug(
            "PID update %d: D=%g delta=%g deriv=%g I=%g beta=%g",
            self._num_updates,
            d,
            delta,
            deriv,
            integral,
            beta,
        )
        return beta

    # ---------------------------------------------------------------------- checkpointing
    def _config(self) -> dict[str, float]:
        return {
            "target": self._target,
            "kp": self._kp,
            "ki": self._ki,
            "kd": self._kd,
            "beta_init": self._beta_init,
            "beta_min": self._beta_min,
            "beta_max": self._beta_max,
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the controller's state as plain python values.

        Only floats, ints, ``None`` and a nested dict, so ``torch.save`` /
        ``torch.load(weights_only=True)`` and JSON both round-trip it. The ``config`` entry
        records the hyper-parameters for reference; :meth:`load_state_dict` does not apply it.
        """
        return {
            "beta": self._beta,
            "integral": self._integral,
            "prev_distance": self._prev_distance,
            "num_updates": self._num_updates,
            "config": self._config(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`.

        The controller keeps its own hyper-parameters (so a resumed run can change, say, the
        target on purpose); a mismatch with the saved ``config`` is logged as a warning. A saved
        ``beta`` outside this controller's ``[beta_min, beta_max]`` is clamped into it.

        Raises:
            ValueError: if an entry is missing or invalid; the state is then left unchanged.
        """
        required = ("beta", "integral", "prev_distance", "num_updates")
        missing = [k for k in required if k not in state_dict]
        if missing:
            raise ValueError(f"PIDController state_dict is missing {missing}.")
        # Parse everything first and assign last, so a bad entry leaves the state intact.
        try:
            beta = _real("beta", state_dict["beta"])
            integral = _real("integral", state_dict["integral"])
            prev = state_dict["prev_distance"]
            prev = None if prev is None else _real("prev_distance", prev)
            num_updates = state_dict["num_updates"]
        except TypeError as err:
            raise ValueError(f"invalid PIDController state_dict: {err}") from err
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"state_dict beta must be finite and > 0, got {beta!r}.")
        if not (math.isfinite(integral) and integral >= 0):
            raise ValueError(f"state_dict integral must be finite and >= 0, got {integral!r}.")
        if prev is not None and not math.isfinite(prev):
            raise ValueError(f"state_dict prev_distance must be finite or None, got {prev!r}.")
        if isinstance(num_updates, bool) or not isinstance(num_updates, int) or num_updates < 0:
            raise ValueError(f"state_dict num_updates must be an int >= 0, got {num_updates!r}.")

        saved_config = state_dict.get("config")
        if saved_config is not None:
            current = self._config()
            diff = {
                k: (saved_config.get(k), v) for k, v in current.items() if saved_config.get(k) != v
            }
            if diff:
                logger.warning(
                    "Loading PID state saved with different settings (saved, current): %s; "
                    "keeping the current settings.",
                    diff,
                )
        clamped = min(max(beta, self._beta_min), self._beta_max)
        if clamped != beta:
            logger.warning(
                "Loaded beta %g is outside [%g, %g]; clamped to %g.",
                beta,
                self._beta_min,
                self._beta_max,
                clamped,
            )

        self._beta = clamped
        self._integral = integral
        self._prev_distance = prev
        self._num_updates = num_updates

    def __repr__(self) -> str:
        config = ", ".join(f"{k}={v:g}" for k, v in self._config().items())
        return f"{type(self).__name__}({config}, beta={self._beta:g}, updates={self._num_updates})"
