"""``LangevinFlowLoss``: objective (10) for a :class:`~torchrl_mcmc.LangevinFlowActor`, TD3-style.

Paper eqs. 10–11 and §4.1; docs/method.md §1.2, §1.3.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from tensordict import TensorDictBase, TensorDictParams
from torch import Tensor

from torchrl_mcmc.mcmc.gaussian import squash
from torchrl_mcmc.mcmc.langevin import LangevinFlow, smoothed_norm
from torchrl_mcmc.mcmc.settings import check_number
from torchrl_mcmc.modules.langevin_actor import LangevinFlowActor, LangevinSample, add_action_noise
from torchrl_mcmc.objectives.common import Chains, MCMCPolicyLoss, batch_mean

__all__ = ["LangevinFlowLoss"]

UpdateMode = Literal["alternating", "joint"]


class LangevinFlowLoss(MCMCPolicyLoss):
    """Objective (10) of MCMC policy optimisation on a TD3 critic, as a TorchRL loss.

    Per state, with ``aK = squash(f_h(u0))`` the flow's action started at the policy's
    ``u0 = pi_theta(s)`` (unsquashed) and ``pi_theta_t`` the frozen prior:

    .. code-block:: text

        J = Q(s, aK) - beta * ||aK - pi_theta_t(s)||_delta  ( = beta * U(uK) )

    ``Q`` is the actor's :meth:`~torchrl_mcmc.LangevinFlowActor.scored_value` of the critics
    (their minimum, or ``mean - pessimism * std`` with ``potential_critic="mean_std"``; detached
    in ``J``), the same ``Q`` the flow's potential ``U`` uses, so the flow ascends exactly what
    ``J`` scores; ``||.||_delta`` is the
    actor's smoothed norm (see :class:`~torchrl_mcmc.LangevinFlowActor`). TD3 scores its actor
    with the first critic only; the minimum costs one more critic evaluation per state and keeps
    the flow and the objective from disagreeing. Gradients reach the policy ``theta`` through
    ``u0`` and every coupling layer (a double backward through the critic), and the flow's
    parameters ``h`` (step sizes and networks) through the layers. No noise enters ``J``: the
    flow is deterministic, so the deterministic policy gradient applies.

    Outputs of :meth:`forward`:

    * ``loss_actor``: ``-J`` for ``theta``. In ``"alternating"`` mode (eq. 11) it reaches
      ``theta`` only; in ``"joint"`` mode it reaches ``theta`` and ``h``.
    * ``loss_flow``: ``-J`` for ``h`` only (``"alternating"`` mode; absent in ``"joint"``).
    * ``loss_qvalue``: twin-critic TD loss with TD3's target (below). It writes each sample's
      ``td_error`` into the input tensordict (the ``priority`` key), for a prioritized replay
      buffer, whether called alone (delayed updates) or by :meth:`forward`.
    * detached diagnostics: ``beta``, ``policy_distance`` (``D_LD = mean ||aK - pi_theta_t(s)||``
      with the exact norm, what the PID controller reads), ``critic_gain``
      (``Q(s, aK) - Q(s, a0)``: what the flow adds over the plain TD3 action
      ``a0 = pi_theta(s)``), ``step_size`` (mean ``eps`` over the layers), ``num_divergent``,
      ``td_error`` (its batch mean).

    **Divergent flows** (a non-finite end, see :class:`~torchrl_mcmc.mcmc.LangevinFlow`, or a
    non-finite ``Q(s, aK)``: a critic that returns NaN or inf there, which no layer evaluates)
    are counted in ``num_divergent`` and left out of the objective: the flow is run again on
    the other states, so that no gradient passes through a diverged one. The diagnostics
    describe the flows that did not diverge. When every flow of the batch diverges,
    ``loss_actor`` and ``loss_flow`` are zeros that backpropagate zero gradients, never NaN,
    and ``policy_distance`` and ``critic_gain`` are left out (no flow measured them).

    **Non-finite values.** A NaN or inf in the batch (observation, action, reward, next
    observation) raises a ``ValueError`` naming the key, before anything is computed: the data
    is at fault. Non-finite parameters (a critic blown up to inf) give a non-finite
    ``loss_qvalue``, returned as it is: the training loop must skip that step.

    **Defaults** are the recipe's (``examples/ld_td3.py``), the recommended configuration. The
    paper's LD-TD3 differs from it only by the PID controller on ``beta``, which is the training
    loop's (``pid.enabled=true`` in the recipe; docs/method.md §1.8): its loss is
    ``LangevinFlowLoss(actor, **LangevinFlowLoss.PAPER_KWARGS)``, the defaults as they stand.

    **The TD target** is TD3's: ``r + gamma * min_j Q'_j(s', a')`` with
    ``a' = clamp(squash(f_h'(u0')) + clamp(N(0, policy_noise^2), -noise_clip, noise_clip) * w)``,
    ``w`` the box's half-width (so the defaults are TD3's ``0.2``/``0.5`` on a ``[-1, 1]`` box).
    ``u0'`` comes from the target policy and ``f_h'`` is the flow with the *target* flow
    parameters: the policy and the flow together are the actor, and TD3 keeps a slow copy of
    the actor for its targets (``delay_actor``). The potential inside that target flow uses the
    *current* critics: the online critics steer the action and the target critics evaluate it,
    selection decoupled from evaluation as in double Q-learning (and the same choice as
    :class:`~torchrl_mcmc.HMCLoss`). Every target parameter is created by
    ``convert_to_functional``, so :class:`~torchrl.objectives.SoftUpdate` works unchanged.

    **Delayed policy updates** live in the training loop, as in TorchRL's TD3 (its loss has no
    step counter either): call :meth:`qvalue_loss` every step, and every ``policy_delay``
    steps :meth:`actor_loss` (and :meth:`flow_loss`) followed by ``SoftUpdate.step()``. Within a
    delayed step, stepping the policy optimiser on :meth:`actor_loss` and then the flow
    optimiser on :meth:`flow_loss` is eq. 11 exactly (``h`` moves at the new ``theta``);
    :meth:`forward` gives all losses at the current ``(theta, h)`` for loops that backpropagate
    their sum.

    ``beta`` is the actor's buffer, exposed here: ``loss.beta = 0.5`` (or a PID controller)
    writes it in place, so the next action and the next loss both use it, and ``state_dict``
    carries it (under ``actor.beta``). Refresh the prior once per policy iteration
    (:meth:`refresh_prior`).

    Args:
        actor: the :class:`~torchrl_mcmc.LangevinFlowActor` to train. Its critic's parameters
            are converted (``num_qvalue_nets`` copies, target copies) and bound back to the
            actor, so the actor always acts with the critic this loss trains.

    Keyword Args:
        num_qvalue_nets: number of critics (2: TD3's clipped double Q).
        loss_function: critic regression loss (``"l2"``, as TD3's paper; ``"smooth_l1"``,
            ``"l1"``).
        policy_noise: target smoothing noise scale, in units of the box's half-width (``>= 0``).
        noise_clip: clip of that noise, same units (``>= 0``).
        delay_actor: keep target copies of the policy and the flow (TD3). ``False``: the target
            action comes from the current ones.
        delay_qvalue: keep target critics (TD3). ``False``: the current critics, detached.
        update_mode: ``"alternating"`` (eq. 11, the paper's and the recipe's) or ``"joint"``
            (one flow, one loss for ``theta`` and ``h``: half the double-backward work).

    Raises:
        TypeError: ``actor`` is no :class:`~torchrl_mcmc.LangevinFlowActor`;
            ``num_qvalue_nets``, ``policy_noise`` or ``noise_clip`` is no number (a ``bool``
            included).
        ValueError: ``policy_noise`` or ``noise_clip`` not finite or ``< 0``,
            ``num_qvalue_nets < 1``, or an unknown option, named with its value.

    Warns:
        UserWarning: ``actor`` was trained by another loss already: it now acts with this
            loss's critics, and the earlier loss's no longer act.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule, TensorDictSequential
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, TanhModule, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_mcmc import LangevinFlowActor, LangevinFlowLoss, PIDController
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> policy = TensorDictSequential(  # TorchRL's TD3 actor
        ...     TensorDictModule(MLP(in_features=4, out_features=2, num_cells=[32]),
        ...                      in_keys=["observation"], out_keys=["param"]),
        ...     TanhModule(in_keys=["param"], out_keys=["action"], spec=spec))
        >>> critic = ValueOperator(MLP(in_features=6, out_features=1, num_cells=[32]),
        ...                        in_keys=["observation", "action"])
        >>> actor = LangevinFlowActor(policy, critic, state_dim=4, num_layers=4)
        >>> loss = LangevinFlowLoss(actor)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> updater = SoftUpdate(loss, eps=0.995)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(16, 4), "action": torch.rand(16, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(16, 4), "reward": torch.randn(16, 1),
        ...              "done": torch.zeros(16, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(16, 1, dtype=torch.bool)}}, batch_size=[16])
        >>> sorted(k for k in loss(batch).keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_flow', 'loss_qvalue']
        >>> optim_q = torch.optim.Adam(loss.critic_parameters(), lr=3e-4)
        >>> optim_theta = torch.optim.Adam(loss.policy_parameters(), lr=3e-4)
        >>> optim_h = torch.optim.Adam(loss.flow_parameters(), lr=3e-4)
        >>> pid = PIDController(target=0.1)
        >>> loss.refresh_prior()  # once per policy iteration (collected batch)
        >>> for step in range(1, 5):  # TD3's delayed policy updates, every 2nd step
        ...     loss_q, _ = loss.qvalue_loss(batch)
        ...     optim_q.zero_grad(); loss_q.backward(); optim_q.step()
        ...     if step % 2 == 0:
        ...         loss_theta, info = loss.actor_loss(batch)
        ...         optim_theta.zero_grad(); loss_theta.backward(); optim_theta.step()
        ...         loss_h, _ = loss.flow_loss(batch)  # eq. 11: h moves at the new theta
        ...         optim_h.zero_grad(); loss_h.backward(); optim_h.step()
        ...         updater.step()
        >>> sorted(info)
        ['critic_gain', 'num_divergent', 'policy_distance', 'step_size']
        >>> loss.beta = pid.update(info["policy_distance"])  # once per policy iteration
    """

    flow_network: LangevinFlow
    flow_network_params: TensorDictParams
    target_flow_network_params: TensorDictParams

    #: The paper's configuration (eq. 11's alternating updates); with a PID controller on
    #: ``beta``, ``pid.enabled=true`` of ``examples/ld_td3.py``.
    PAPER_KWARGS: ClassVar[Mapping[str, Any]] = MappingProxyType({"update_mode": "alternating"})

    def __init__(
        self,
        actor: LangevinFlowActor,
        *,
        num_qvalue_nets: int = 2,
        loss_function: str = "l2",
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        delay_actor: bool = True,
        delay_qvalue: bool = True,
        update_mode: UpdateMode = "alternating",
    ) -> None:
        if not isinstance(actor, LangevinFlowActor):
            raise TypeError(f"actor must be a LangevinFlowActor, got {type(actor).__name__}.")
        policy_noise = check_number("policy_noise", policy_noise, positive=False)
        noise_clip = check_number("noise_clip", noise_clip, positive=False)
        super().__init__(
            actor,
            num_qvalue_nets=num_qvalue_nets,
            loss_function=loss_function,
            update_mode=update_mode,
        )
        self.policy_noise = float(policy_noise)
        self.noise_clip = float(noise_clip)
        # theta and h: the actor's own Parameter objects (no copy), so the actor acts with what
        # is trained here; their Polyak copies feed the TD target (TD3's target actor).
        self.convert_to_functional(actor.policy, "actor_network", create_target_params=delay_actor)
        self.convert_to_functional(actor.flow, "flow_network", create_target_params=delay_actor)
        self._convert_critics(num_qvalue_nets, create_target_params=delay_qvalue)

    _DIAGNOSTICS = (
        "beta",
        "policy_distance",
        "critic_gain",
        "step_size",
        "num_divergent",
        "td_error",
    )

    # ------------------------------------------------------------------ objective (10)
    def _flow(
        self, tensordict: TensorDictBase, freeze: Literal["flow", "policy"] | None
    ) -> Chains[LangevinSample]:
        """The differentiable flows of :meth:`_guarded_sample`; ``freeze`` names the
        parameters they must not reach."""
        critic = self.qvalue_network_params.detach()
        if freeze is None:
            return self._guarded_sample(tensordict, critic)
        if freeze == "flow":
            params, module = self.flow_network_params, self.flow_network
        else:
            params, module = self.actor_network_params, self.actor_network
        # preserve_module_state=False writes the detached tensors as they are; the default
        # re-wraps them as Parameters that require grad, and backward would compute (and then
        # drop) gradients for the frozen group through the whole flow.
        with params.detach().to_module(module, preserve_module_state=False):
            return self._guarded_sample(tensordict, critic)

    def _guarded_sample(
        self, tensordict: TensorDictBase, critic: TensorDictBase
    ) -> Chains[LangevinSample]:
        """The flow on every state, then on the states whose flows did not diverge (a
        non-finite end, or a non-finite ``Q(s, aK)``), to train on."""
        out = self.actor.sample(tensordict, create_graph=True, critic_params=critic)
        states, value = tensordict, self._q_end(tensordict, out, critic)
        while (drop := self._drop_divergent(out, value)) is not None:
            # A diverged flow's backward multiplies zero upstream gradients by non-finite local
            # derivatives (0 * inf = nan) and would poison every parameter's gradient. The flow
            # is deterministic, so running it again on the other states alone is clean.
            states = states[~drop]
            out = self.actor.sample(states, create_graph=True, critic_params=critic)
            value = self._q_end(states, out, critic)
        return self._chains(tensordict, states, out, value)

    def _q_end(
        self, tensordict: TensorDictBase, out: LangevinSample, critic: TensorDictBase
    ) -> Tensor:
        """``Q(s, aK)``, the actor's scored value of the detached critics ``critic``:
        differentiable w.r.t. the action."""
        return self.actor.scored_value(self._qvalues(tensordict, out.action, critic))

    def _objective(
        self, tensordict: TensorDictBase, out: LangevinSample, q: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-state ``J`` of eq. 10 (critic detached, prior frozen, smoothed norm) and the
        ``Q(s, aK)`` in it; ``q``: that value, if the caller has it already."""
        if q is None:
            q = self._q_end(tensordict, out, self.qvalue_network_params.detach())
        distance = smoothed_norm(out.action - out.prior_action, self.actor.distance_smoothing)
        return q - self.beta * distance, q

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``-J`` for ``theta`` (and ``h`` too in ``"joint"`` mode), with diagnostics."""
        self._check_batch(tensordict, self.actor.in_keys)
        freeze = "flow" if self.update_mode == "alternating" else None
        chains = self._flow(tensordict, freeze)
        objective, q_end = self._objective(chains.states, chains.sample, chains.value)
        metadata = self._diagnostics(chains.states, chains.sample, q_end.detach())
        metadata["num_divergent"] = chains.num_divergent.to(q_end.dtype)
        return batch_mean(-objective), metadata

    def flow_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``-J`` for ``h`` only: the step sizes and coupling networks."""
        self._check_batch(tensordict, self.actor.in_keys)
        chains = self._flow(tensordict, "policy")
        return batch_mean(-self._objective(chains.states, chains.sample, chains.value)[0]), {}

    @torch.no_grad()
    def _diagnostics(
        self, tensordict: TensorDictBase, out: LangevinSample, q_end: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Detached diagnostics of flows (batch means); ``q_end``: ``Q(s, aK)`` if already
        known. Only ``step_size`` for no flow (every one of the batch diverged)."""
        step_size = self.actor.flow.step_size
        metadata = {
            "step_size": step_size.mean() if step_size.numel() else out.u0.new_zeros(()),
        }
        if not tensordict.batch_size.numel():
            return metadata
        low, high = self.actor.action_low.to(out.u0.dtype), self.actor.action_high.to(out.u0.dtype)
        base_action = squash(out.u0, low, high)
        params = self.qvalue_network_params
        q_start = self.actor.scored_value(self._qvalues(tensordict, base_action, params))
        if q_end is None:
            q_end = self.actor.scored_value(self._qvalues(tensordict, out.action, params))
        metadata["policy_distance"] = (out.action - out.prior_action).norm(dim=-1).mean()
        metadata["critic_gain"] = (q_end - q_start).mean()
        return metadata

    # ------------------------------------------------------------------ critic loss
    @torch.no_grad()
    def _next_action(self, next_td: TensorDictBase) -> Tensor:
        """TD3's smoothed target action: target policy, target flow, clipped noise."""
        # preserve_module_state=False (as TD3Loss): the default would turn the target buffers
        # into Parameters that require grad, inside the loss's own target TensorDictParams.
        with (
            self.target_actor_network_params.to_module(
                self.actor_network, preserve_module_state=False
            ),
            self.target_flow_network_params.to_module(
                self.flow_network, preserve_module_state=False
            ),
        ):
            out = self.actor.sample(next_td, critic_params=self.qvalue_network_params)
        low, high = self.actor.action_low.to(out.u0.dtype), self.actor.action_high.to(out.u0.dtype)
        return add_action_noise(out.action, low, high, self.policy_noise, self.noise_clip)

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """Twin-critic TD loss with TD3's target (TorchRL's ``TD3Loss.value_loss``); writes
        each sample's ``td_error`` into ``tensordict``."""
        self._check_batch(tensordict, self.in_keys)
        next_td = tensordict.get("next")
        next_action = self._next_action(next_td)
        with torch.no_grad():
            next_q = self._qvalues(next_td, next_action, self.target_qvalue_network_params)
        return self._critic_td_loss(tensordict, next_q.min(0).values)
