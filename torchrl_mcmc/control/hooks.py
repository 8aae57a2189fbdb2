"""The TorchRL trainer edge of the PID controller: :class:`PIDBetaHook`.

The paper updates ``beta`` once per policy iteration from the distance measured over that
iteration's optimisation steps (§4.1). In a :class:`~torchrl.trainers.Trainer` a policy
iteration is one collected batch, followed by ``optim_steps_per_batch`` optimisation steps.

Which stage, and why: in torchrl 0.14 the only stages that see the loss *output* are
``process_loss`` and ``optimizer`` (per step, both deprecated in favour of
``OptimizationStepper`` and both skipped when a stepper is used) and
``post_optim_complete_log``, which fires once per batch, after the last optimisation step, with
the trainer's running mean of every step's detached loss output (``average_losses``). That mean
*is* the per-step accumulation the rule needs, it is computed on both the optimizer-hook and the
stepper paths, and the stage does not fire when no optimisation happened (e.g. during
``init_random_frames``), so ``beta`` is not moved by a batch that trained nothing. The hook
therefore registers there, and nowhere else.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from tensordict import NestedKey, TensorDictBase
from tensordict.utils import unravel_key
from torch import Tensor, nn
from torchrl.trainers import TrainerHookBase

from torchrl_mcmc.control.pid import PIDController, distance_as_float

if TYPE_CHECKING:
    from torchrl.trainers import Trainer

__all__ = ["PIDBetaHook"]

logger = logging.getLogger(__name__)

# The stage the hook runs at (see the module docstring for the choice).
_STAGE = "post_optim_complete_log"


def _check_emits_distance(loss_module: nn.Module, distance_key: NestedKey) -> None:
    """A ``ValueError`` unless ``loss_module`` may emit ``distance_key`` and lets ``beta`` be
    set: what :class:`PIDBetaHook` needs. A loss that declares nothing (no ``out_keys``) is
    taken at its word; its first output is checked by :meth:`PIDBetaHook.accumulate`."""
    name = type(loss_module).__name__
    if getattr(loss_module, "tunes_alpha", False):
        raise ValueError(
            f"PIDBetaHook: {name} tunes beta itself: with the actor's prior='uniform' beta is "
            "SAC's temperature alpha, tuned to target_entropy, and the loss emits no "
            f"{distance_key!r} for a controller to read. Drop the hook (set the temperature's "
            f"start with {name}(actor, alpha_init=...)), or use the paper's prior, "
            f"HMCActor(policy, critic, **HMCActor.PAPER_KWARGS) and "
            f"{name}(actor, **{name}.PAPER_KWARGS), whose beta a PID controller steers."
        )
    out_keys = getattr(loss_module, "out_keys", None)
    if out_keys is None:
        return
    declared = [unravel_key(k) for k in out_keys]
    if unravel_key(distance_key) not in declared:
        raise ValueError(
            f"PIDBetaHook: {name} emits no {distance_key!r} (its out_keys are {list(out_keys)}), "
            "the policy distance the controller reads. Pass distance_key=<the entry holding "
            "it>, or use a loss that emits one."
        )


class PIDBetaHook(TrainerHookBase):
    """Steer a loss's ``beta`` with a :class:`PIDController`, once per collected batch.

    Per optimisation step the hook reads the detached scalar ``distance_key`` from the loss
    output (:meth:`accumulate`); once per policy iteration it feeds the mean to
    ``controller.update`` and writes the new ``beta`` into ``loss_module`` in place
    (:meth:`step`): ``getattr(loss_module, beta_attr).fill_(beta)`` when the attribute is a
    tensor (a buffer, so the loss's ``state_dict`` carries it), ``setattr`` otherwise.

    With a :class:`~torchrl.trainers.Trainer`, :meth:`register` does both: it hooks the
    ``"post_optim_complete_log"`` stage, which fires once per batch after the optimisation
    steps with the trainer's mean of the steps' loss outputs (so the loss output must keep
    ``distance_key``, as the default optimisation paths do). The returned dict is logged by the
    trainer as ``pid_beta``, ``pid_distance`` and ``pid_integral``; not as ``beta``, because the
    loss's own ``beta`` diagnostic (the value used during the steps) is auto-logged under that
    name from the same mean. :meth:`register` also registers the hook as a trainer module, so
    the controller's state goes into ``Trainer.state_dict()`` and unified checkpoints.

    Notes:
        * With ``num_epochs > 1`` the trainer's running mean restarts every epoch, so the
          distance fed to the controller is the mean over the last epoch's steps.
        * ``learner_backend="ray"`` keeps the loss on a remote learner; the stage is refused
          there (torchrl raises at :meth:`register`). Update ``beta`` inside the learner's
          ``OptimizationStepper`` instead.
        * Use either the trainer registration or manual :meth:`accumulate` / :meth:`step`
          calls, not both, or the distances are counted twice.

    In a plain loop there is no need for the hook; with ``pid`` a :class:`PIDController`::

        loss.beta = pid.update(mean_policy_distance)  # once per policy iteration

    Args:
        loss_module: the loss whose ``beta_attr`` the controller drives (e.g. ``HMCLoss``).
        controller: the PID controller; its current ``beta`` is written into the loss at
            construction, so the two agree from the first optimisation step.
        distance_key: the entry of the loss output holding the policy distance.
        beta_attr: the loss attribute holding ``beta``.

    Raises:
        AttributeError: if ``loss_module`` has no attribute ``beta_attr``.
        TypeError: if ``controller`` is not a :class:`PIDController`.
        ValueError: if ``loss_module`` tunes ``beta`` itself (its ``tunes_alpha``: an
            :class:`~torchrl_mcmc.HMCLoss` whose actor has ``prior="uniform"``, where ``beta``
            is SAC's temperature and no policy distance is emitted), or declares its outputs
            (``out_keys``) and ``distance_key`` is not among them: the controller would have
            nothing to read, and the first :meth:`accumulate` would fail.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> class TinyLoss(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.register_buffer("beta", torch.tensor(1.0))
        >>> loss = TinyLoss()
        >>> pid = PIDController(target=1.0, kp=0.5, ki=0.25, beta_min=0.1)
        >>> hook = PIDBetaHook(loss, pid)
        >>> for distance in (2.0, 4.0):  # the loss outputs of two optimisation steps
        ...     _ = hook.accumulate(TensorDict({"policy_distance": torch.tensor(distance)}))
        >>> hook.step()  # mean 3.0: delta = 2, I = 4 + 2, beta = 0.5 * 2 + 0.25 * 6
        {'pid_beta': 2.5, 'pid_distance': 3.0, 'pid_integral': 6.0}
        >>> assert loss.beta.item() == 2.5 == pid.beta
        >>> hook.register(trainer)  # with a torchrl Trainer  # doctest: +SKIP
    """

    def __init__(
        self,
        loss_module: nn.Module,
        controller: PIDController,
        distance_key: NestedKey = "policy_distance",
        beta_attr: str = "beta",
    ) -> None:
        if not isinstance(controller, PIDController):
            raise TypeError(f"controller must be a PIDController, got {type(controller).__name__}.")
        if not hasattr(loss_module, beta_attr):
            raise AttributeError(
                f"{type(loss_module).__name__} has no attribute {beta_attr!r} for the PID "
                "controller to write beta into; pass beta_attr=<the loss's beta attribute>."
            )
        _check_emits_distance(loss_module, distance_key)
        self.loss_module = loss_module
        self.controller = controller
        self.distance_key = distance_key
        self.beta_attr = beta_attr
        self._distance_sum = 0.0
        self._distance_count = 0
        # The controller owns beta: align the loss with it now, or the first batch of steps
        # would run with whatever value the loss was built with.
        self._write_beta(controller.beta)

    @property
    def beta(self) -> float:
        """The controller's current ``beta`` (also the value in the loss)."""
        return self.controller.beta

    @property
    def num_accumulated(self) -> int:
        """How many distances wait for the next :meth:`step`."""
        return self._distance_count

    def _write_beta(self, beta: float) -> None:
        current = getattr(self.loss_module, self.beta_attr)
        if isinstance(current, Tensor):
            # In place, so the buffer keeps its device and dtype, and anything holding a
            # reference to it (a compiled loss, an actor sharing it) sees the new value.
            with torch.no_grad():
                current.fill_(beta)
        else:
            setattr(self.loss_module, self.beta_attr, beta)

    def accumulate(self, loss_td: TensorDictBase | Mapping[str, Any]) -> float:
        """Record the distance of one optimisation step (or a mean of several).

        Args:
            loss_td: the loss output, holding a one-element ``distance_key`` entry.

        Returns:
            The distance read, as a float.

        Raises:
            KeyError: if ``distance_key`` is missing from ``loss_td``.
            ValueError: if the distance is not finite or not a scalar; nothing is recorded.
        """
        try:
            distance = loss_td[self.distance_key]
        except KeyError as err:
            keys = list(loss_td.keys())
            raise KeyError(
                f"PIDBetaHook: the loss output has no {self.distance_key!r} entry (keys: "
                f"{keys}). Make the loss emit the policy distance, or pass distance_key=."
            ) from err
        value = distance_as_float(distance)
        self._distance_sum += value
        self._distance_count += 1
        return value

    def step(self) -> dict[str, float] | None:
        """Feed the mean accumulated distance to the controller and write the new beta.

        Call once per policy iteration. The accumulator is emptied.

        Returns:
            ``{"pid_beta", "pid_distance", "pid_integral"}`` for logging, or ``None`` (and no
            update) when no distance was accumulated since the last step.
        """
        if self._distance_count == 0:
            logger.warning("PIDBetaHook.step() without any accumulated distance; beta unchanged.")
            return None
        mean_distance = self._distance_sum / self._distance_count
        if not math.isfinite(mean_distance):
            # A sum of finite floats can still overflow; drop it rather than poison the state.
            self._distance_sum, self._distance_count = 0.0, 0
            raise ValueError(f"mean accumulated distance overflowed to {mean_distance!r}.")
        beta = self.controller.update(mean_distance)
        self._write_beta(beta)
        self._distance_sum, self._distance_count = 0.0, 0
        return {
            "pid_beta": beta,
            "pid_distance": mean_distance,
            "pid_integral": self.controller.integral,
        }

    def __call__(
        self, optim_steps: int, average_losses: TensorDictBase | None
    ) -> dict[str, float] | None:
        """The ``post_optim_complete_log`` entry point: one PID update per collected batch.

        Args:
            optim_steps: the trainer's total optimisation step count (unused).
            average_losses: the trainer's mean of this batch's detached loss outputs.

        Returns:
            The logging dict of :meth:`step`, or ``None`` when there was nothing to average.
        """
        del optim_steps  # the rule is driven by policy iterations, not by the step count
        if average_losses is not None:
            self.accumulate(average_losses)
        return self.step()

    def register(self, trainer: Trainer, name: str = "pid_beta") -> None:
        """Hook into ``trainer`` once per batch and add this hook's state to its checkpoints.

        Args:
            trainer: the :class:`~torchrl.trainers.Trainer`.
            name: the module name under which the state appears in ``trainer.state_dict()``.
        """
        # Module first, so that register_op names the timed hook after it (as LogTiming does).
        trainer.register_module(name, self)
        trainer.register_op(_STAGE, self)

    def state_dict(self) -> dict[str, Any]:
        """The controller's state plus the pending accumulator, as plain python values."""
        return {
            "controller": self.controller.state_dict(),
            "distance_sum": self._distance_sum,
            "distance_count": self._distance_count,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the state from :meth:`state_dict` and write the restored beta into the loss."""
        distance_sum = float(state_dict.get("distance_sum", 0.0))
        distance_count = int(state_dict.get("distance_count", 0))
        if distance_count < 0 or not math.isfinite(distance_sum):
            raise ValueError(
                f"invalid PIDBetaHook accumulator: sum={distance_sum!r}, count={distance_count!r}."
            )
        self.controller.load_state_dict(state_dict["controller"])
        self._distance_sum, self._distance_count = distance_sum, distance_count
        # The trainer loads the loss before its modules; whichever order, the controller wins.
        self._write_beta(self.controller.beta)
