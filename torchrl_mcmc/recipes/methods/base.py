"""What a method is to the trainer (:class:`Method`), and what every method shares
(:class:`LossMethod`)."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from torch import nn
from torchrl.objectives import LossModule, SoftUpdate

from torchrl_mcmc import PIDController

#: Keys of ``cfg.pid`` that configure the loop, not :class:`PIDController`.
_NOT_PID_ARGUMENTS = ("enabled", "iteration_updates")


class Method(Protocol):
    """What a recipe provides the trainer: the acting policy and one gradient update."""

    #: The policy the collector and the evaluation run (exploration by interaction type).
    policy: nn.Module
    #: Keys of a collected batch that the updates read (the replay buffer stores only these).
    replay_keys: list
    #: Gradient steps skipped so far because their loss or gradients were not finite (the
    #: parameters and the optimisers' state were left as they were); the run counts an update
    #: that skipped one as non-finite and stops after ``guard.max_nonfinite_updates`` in a row.
    nonfinite_steps: int
    #: What the last skipped step saw (which optimisers, the loss, the gradient norm).
    nonfinite_reason: str

    def begin_iteration(self) -> None:
        """Called once per collected batch, before its updates (e.g. refresh a prior)."""

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        """One full update (critic, actor, targets) on a sampled minibatch; returns scalars."""

    def end_iteration(self, metrics: list[dict[str, float]]) -> dict[str, float]:
        """Called after a batch's updates (e.g. a PID step); returns scalars to log."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class LossMethod:
    """What every recipe's :class:`Method` shares: a TorchRL loss, its optimisers and checkpoint.

    Each method is one loss module with a soft update of its target networks, trained by named
    optimisers; the HMC and Langevin methods add a PID controller of ``beta``, the TD3-style
    ones a counter of updates for the delayed policy step. A subclass builds its actor and loss,
    passes them and its optimisers to ``__init__``, and implements :meth:`update` with
    :meth:`_step`; saving and restoring all of that state is done here. :meth:`_step` skips a
    step whose loss or gradients are not finite (a learning rate too large, rewards of a large
    scale...), so that the parameters and the optimisers' state keep their last finite values,
    and counts it in :attr:`nonfinite_steps`.

    :meth:`state_dict` holds ``"loss"`` (the loss module's state), ``"optimizers"`` (one state
    per optimiser, by name), ``"pid"`` for a PID-controlled method (``None`` when
    ``cfg.pid.enabled`` is false) with ``"policy_iteration"`` (the updates and distances of
    the current policy iteration, with ``cfg.pid.iteration_updates``), and ``"steps"`` for a
    delayed-policy one.

    A PID-controlled method's policy iteration (a refresh of the prior ``pi_theta_t`` and a PID
    step on the mean distance measured since) is one collected batch by default, as in the
    paper; ``cfg.pid.iteration_updates = n`` makes it every ``n`` updates instead, so that the
    distance the target refers to, and with it the target and the gains, mean the same whatever
    the frames per batch and the updates per frame. Subclasses pass each update's metrics
    through :meth:`_count_update`.

    Args:
        cfg: the recipe's configuration (``optim.gamma``, ``optim.polyak``; ``pid`` and
            ``td3.policy_delay`` where the class attributes ask for them).
        loss: the method's loss module; its value estimator is made here.
        policy: the policy that acts (collection and evaluation).
        optimizers: the optimisers, by name (the checkpoint's keys).
    """

    #: The sections of its recipe's configuration that it reads beyond the ones every recipe
    #: has (``sac`` for SAC, ``hmc`` and ``pid`` for HMC-SAC...): a configuration without them,
    #: or with another recipe's, is another method's (refused when a run opens).
    sections: ClassVar[frozenset[str]] = frozenset()
    #: ``beta`` is PID-controlled (``cfg.pid``): the checkpoint has a ``"pid"`` entry, ``None``
    #: when ``cfg.pid.enabled`` is false.
    pid_controlled: ClassVar[bool] = False
    #: The actor and targets move every ``cfg.td3.policy_delay``-th update only (TD3): the
    #: checkpoint has the update counter ``"steps"``, so that a resumed run keeps the phase.
    delayed_policy: ClassVar[bool] = False

    def __init__(
        self,
        cfg: DictConfig,
        loss: LossModule,
        policy: nn.Module,
        optimizers: dict[str, torch.optim.Optimizer],
    ) -> None:
        loss.make_value_estimator(gamma=cfg.optim.gamma)
        self.loss = loss
        self.target_updater = SoftUpdate(loss, eps=cfg.optim.polyak)
        self.policy = policy
        self.optimizers = optimizers
        self.replay_keys = loss.in_keys
        self.nonfinite_steps = 0
        self.nonfinite_reason = ""
        self.pid: PIDController | None = None
        if self.pid_controlled:
            if cfg.pid.enabled:
                gains = {k: v for k, v in cfg.pid.items() if k not in _NOT_PID_ARGUMENTS}
                self.pid = PIDController(**gains)
            #: Updates per policy iteration (a prior refresh and a PID step); ``None``: one
            #: collected batch, whatever its number of updates.
            self.iteration_updates: int | None = cfg.pid.iteration_updates
            self._iteration: dict[str, Any] = {"updates": 0, "distances": []}
        if self.delayed_policy:
            self.policy_delay: int = cfg.td3.policy_delay
            self.steps = 0

    def begin_iteration(self) -> None:
        if self.pid_controlled and self.iteration_updates is None:
            # theta_t <- theta once per policy iteration (docs/method.md §1.3), never per step.
            self.loss.refresh_prior()

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        raise NotImplementedError

    def end_iteration(self, metrics: list[dict[str, float]]) -> dict[str, float]:
        if not self.pid_controlled:
            return {}
        if self.iteration_updates is None:
            # Without a controller, or without an actor update this batch, beta is unchanged.
            distances = [m["policy_distance"] for m in metrics if "policy_distance" in m]
            return self._update_beta(distances) or {"beta": self.loss.beta.item()}
        return {"beta": self.loss.beta.item()}

    def _count_update(self, metrics: dict[str, float]) -> dict[str, float]:
        """With ``pid.iteration_updates = n``: counts an update, and after every n-th one
        steps the PID on their mean distance and refreshes the prior. Returns ``metrics``, with
        the PID's scalars on the updates that step it."""
        if not self.pid_controlled or self.iteration_updates is None:
            return metrics
        iteration = self._iteration
        iteration["updates"] += 1
        if "policy_distance" in metrics:
            iteration["distances"].append(metrics["policy_distance"])
        if iteration["updates"] == self.iteration_updates:
            metrics.update(self._update_beta(iteration["distances"]) or {})
            self.loss.refresh_prior()
            self._iteration = {"updates": 0, "distances": []}
        return metrics

    def _step(self, loss: torch.Tensor, *names: str) -> bool:
        """One gradient step on ``loss`` with the optimisers ``names`` (all of them if none).

        The step is taken only if ``loss`` and the norm of the optimisers' gradients are
        finite; otherwise the gradients are dropped, the parameters and the optimisers' state
        stay as they were, :attr:`nonfinite_steps` counts the step and
        :attr:`nonfinite_reason` says what was not finite. Returns whether it was taken.
        """
        names = names or tuple(self.optimizers)
        optimizers = [self.optimizers[n] for n in names]
        for optim in optimizers:
            optim.zero_grad(set_to_none=True)
        loss.backward()
        grads = [
            p.grad
            for optim in optimizers
            for group in optim.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        # A finite total norm also bounds every squared gradient (Adam's second moment).
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
        if not (torch.isfinite(loss) & torch.isfinite(grad_norm)).item():
            for optim in optimizers:
                optim.zero_grad(set_to_none=True)
            self.nonfinite_steps += 1
            self.nonfinite_reason = (
                f"the {', '.join(names)} step: loss {loss.item():.3g}, "
                f"gradient norm {grad_norm.item():.3g}"
            )
            return False
        for optim in optimizers:
            optim.step()
        return True

    def _policy_turn(self) -> bool:
        """Counts one update; true for those that also move the actor and targets (TD3)."""
        self.steps += 1
        return self.steps % self.policy_delay == 0

    def _update_beta(self, distances: list[float]) -> dict[str, float] | None:
        """One PID step on the mean of the iteration's policy ``distances``, and ``beta`` set
        from it.

        ``None`` when there is no controller, or no update measured a finite distance (with
        delayed updates an iteration may have no actor update; a non-finite update's distance is
        left out, so that it never reaches the controller's memory).
        """
        distances = [d for d in distances if math.isfinite(d)]
        if self.pid is None or not distances:
            return None
        distance = sum(distances) / len(distances)
        self.loss.beta = self.pid.update(distance)
        return {"pid_distance": distance, "beta": self.pid.beta}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "loss": self.loss.state_dict(),
            "optimizers": {name: optim.state_dict() for name, optim in self.optimizers.items()},
        }
        if self.pid_controlled:
            state["pid"] = self.pid.state_dict() if self.pid is not None else None
            state["policy_iteration"] = {
                "updates": self._iteration["updates"],
                "distances": list(self._iteration["distances"]),
            }
        if self.delayed_policy:
            state["steps"] = self.steps
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"])
        for name, optim in self.optimizers.items():
            optim.load_state_dict(state["optimizers"][name])
        if self.pid is not None:
            self.pid.load_state_dict(state["pid"])
        if self.pid_controlled:
            saved = state["policy_iteration"]
            self._iteration = {"updates": saved["updates"], "distances": list(saved["distances"])}
        if self.delayed_policy:
            self.steps = state["steps"]


def adam_for_actor_and_critics(loss: LossModule, lr: float) -> dict[str, torch.optim.Optimizer]:
    """Adam on the actor and on the critics of a TorchRL actor-critic loss (SAC, TD3)."""
    return {
        "actor": torch.optim.Adam(loss.actor_network_params.values(True, True), lr=lr),
        "critic": torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=lr),
    }
