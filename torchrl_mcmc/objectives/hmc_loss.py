"""``HMCLoss``: objective (17) for an :class:`~torchrl_mcmc.HMCActor`, with twin critics.

Paper eqs. 11, 15–17 and §4.1; docs/method.md §1.1, §1.3, §1.4, §1.5.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn

from torchrl_mcmc.mcmc.gaussian import (
    squash,
    squash_log_det,
    standard_normal_log_prob,
)
from torchrl_mcmc.mcmc.settings import check_positive_float
from torchrl_mcmc.modules.hmc_actor import HMCActor, HMCSample
from torchrl_mcmc.objectives.common import (
    Chains,
    MCMCPolicyLoss,
    batch_mean,
    check_target_entropy,
)

__all__ = ["HMCLoss"]

logger = logging.getLogger(__name__)

UpdateMode = Literal["alternating", "joint"]
ValueEntropy = Literal["none", "auxiliary"]
NextAction = Literal["chain", "base"]


class HMCLoss(MCMCPolicyLoss):
    """Objective (17) of MCMC policy optimisation, and SAC's objective through the same chain,
    as a TorchRL loss.

    Per state, with ``(uK, rhoK)`` the end of the actor's chain started at
    ``u0 ~ pi_theta(.|s)``, ``rho0 ~ N(0, I)``, and ``p`` the actor's prior:

    .. code-block:: text

        J = Q(s, squash(uK)) - beta * [log pi_theta(u0|s) - log p(uK|s)] - beta / 2 * rhoK . rhoK

    (the ``+ beta/2 rho0.rho0`` term is constant). Gradients reach the policy ``theta`` through
    the reparameterised ``u0`` and the whole chain (double backward), and the HMC parameters
    ``h`` (step sizes, gates) through the chain. ``Q`` is the actor's
    :meth:`~torchrl_mcmc.HMCActor.scored_value` of the critics: their minimum, or
    ``mean - pessimism * std`` with ``potential_critic="mean_std"``. The critic is detached in
    ``J``.

    **The two priors** (the actor's ``prior``):

    * ``"uniform"`` (the entropy prior, docs/method.md §1.5): ``p`` is uniform over the action
      box and ``J`` is SAC's maximum-entropy objective ``Q(s, aK) - alpha * log q(aK)`` up to
      terms constant in the parameters, where ``log q(aK) = log pi(u0|s) + log N(rho0) -
      log N(rhoK) - log|det da/du|(uK)`` is the auxiliary-variable estimate of the refined
      action's log-density (exact up to the reverse kernel ``N(rhoK)``). The temperature
      ``alpha`` (the actor's ``beta``) is tuned to ``target_entropy`` as
      :class:`~torchrl.objectives.SACLoss` tunes it (``loss_alpha``, parameters
      :meth:`alpha_parameters`) and written into the actor at every call, and the critic
      target carries the same entropy term. With ``K = 0`` this is SAC.
    * ``"policy"`` (the paper's): ``p = pi_theta_t``, the frozen previous policy, refreshed by
      :meth:`refresh_prior` once per policy iteration; ``beta`` is set from outside
      (``loss.beta = 0.5``, or a :class:`~torchrl_mcmc.PIDController` on ``policy_distance``).

    **Defaults** are the recipes' (``examples/hmc_sac.py``): joint updates of ``theta`` and
    ``h`` and the base policy's action in the TD target, the cheap options that, with the
    actor's uniform prior, make the recommended configuration (docs/method.md §2). The paper's
    configuration is :attr:`PAPER_KWARGS` away: ``HMCLoss(actor, **HMCLoss.PAPER_KWARGS)`` with
    an actor built with ``prior="policy", potential_critic="min"``, what ``variant=paper``
    composes.

    Outputs of :meth:`forward` (the temperature's named as :class:`~torchrl.objectives.SACLoss`
    names them):

    * ``loss_actor``: ``-J`` for ``theta``. In ``"alternating"`` mode (eq. 11) it reaches
      ``theta`` only; in ``"joint"`` mode it reaches ``theta`` and ``h``.
    * ``loss_flow``: ``-J`` for ``h`` only (``"alternating"`` mode; absent in ``"joint"``).
    * ``loss_qvalue``: twin-critic TD loss. It writes each sample's ``td_error`` into the input
      tensordict (the ``priority`` key), for a prioritized replay buffer.
    * uniform prior: ``loss_alpha`` and ``alpha``, SAC's; policy prior: ``beta`` and
      ``policy_distance`` (``D_HMC`` of §4.1, what the PID controller reads; under the uniform
      prior it would be minus an entropy, and is not written).
    * detached diagnostics: ``entropy`` (of the refined action in action space, the
      auxiliary-variable estimate; what ``alpha`` is tuned on) and its other parts,
      ``base_entropy`` (of ``pi_theta`` in the unsquashed space; watch it for collapse),
      ``entropy_chain`` (``E[log N(rhoK) - log N(rho0)]``, what the chain adds) and
      ``entropy_squash`` (``E[log|det da/du|(uK)]``, what the squash adds; large and negative
      when actions sit near the bounds): ``entropy`` is ``base_entropy + entropy_chain +
      entropy_squash`` up to the batch's sampling error; ``elbo_gap`` (ELBO at the chain's end
      minus at its start, in units of ``Q / beta``), ``critic_gain`` (``Q(s, aK) - Q(s, a0)``),
      ``num_divergent``, ``step_size`` (mean ``eps``), ``td_error`` (its batch mean).

    **Divergent chains** (see :class:`~torchrl_mcmc.mcmc.HamiltonianFlow`: a non-finite end or
    an energy error past its threshold; and here a non-finite ``Q(s, aK)``) are counted in
    ``num_divergent`` and left out of the objective: the chains of the other states are run
    again with the same draws, so that no gradient passes through a diverged chain. The
    diagnostics describe the chains that did not diverge; when every chain of the batch
    diverges, ``loss_actor`` and ``loss_flow`` are zeros that backpropagate zero gradients,
    ``loss_alpha`` too (no entropy was measured), and the chain's diagnostics are left out
    (docs/method.md, "Non-finite values").

    **Non-finite values.** A NaN or inf in the batch (observation, action, reward, next
    observation) raises a ``ValueError`` naming the key, before anything is computed: the data
    is at fault. Non-finite parameters (a critic blown up to inf) give a non-finite
    ``loss_qvalue``, returned as it is: the training loop must skip that step.

    Alternating updates: ``forward`` gives isolated gradients evaluated at the current
    ``(theta, h)``; for the strictly sequential scheme of eq. 11 call :meth:`actor_loss`, step
    the policy optimiser, then :meth:`flow_loss` and step the chain's optimiser.

    ``beta`` is the actor's buffer, exposed here: ``loss.beta = 0.5`` (or a PID controller)
    writes it in place, so the next action the actor takes and the next loss both use it, and
    ``state_dict`` carries it (under ``actor.beta``).

    Args:
        actor: the :class:`~torchrl_mcmc.HMCActor` to train. Its critic's parameters are
            converted (``convert_to_functional``, ``num_qvalue_nets`` copies, target copies for
            :class:`~torchrl.objectives.SoftUpdate`) and bound back to the actor, so the actor
            always acts with the critic this loss trains.

    Keyword Args:
        num_qvalue_nets: number of critics (2: twin Q, min in targets and in ``U``).
        loss_function: critic regression loss (``"l2"``, ``"smooth_l1"``, ``"l1"``).
        update_mode: ``"joint"`` (one chain, one loss for ``theta`` and ``h``: half the
            double-backward work) or ``"alternating"`` (eq. 11, the paper's).
        value_entropy: the critic target's entropy-like term. ``"none"``: ``V(s') = Q'(s',
            aK')`` (MPO-style: the KL to the prior already regularises). ``"auxiliary"``:
            ``V(s') = Q'(s', aK') - beta * log q(aK')`` with the auxiliary-variable estimate
            ``log q = log pi(u0') + log N(rho0') - log N(rhoK')`` (in ``u``; in action space,
            ``- log|det da/du|(uK')`` too, with the uniform prior). Default (``None``):
            ``"auxiliary"`` (SAC's soft target) with the ``"uniform"`` prior, ``"none"`` with
            the ``"policy"`` one.
        next_action: the TD target's next action. ``"base"``: the base policy's sample
            ``squash(u0')``, one chain fewer per update (with the uniform prior, the target is
            then SAC's). ``"chain"``: the chain's on ``s'`` (the paper's).
        target_entropy: the entropy ``alpha`` is tuned to (uniform prior only): a finite
            float, or ``"auto"`` for ``-action_dim`` (SAC's default).
        alpha_init: initial temperature (uniform prior only; SAC's default ``1.0``): finite,
            ``> 0``, and, as the actor's ``beta`` it becomes, with a finite non-zero ``float32``
            value and reciprocal (about ``2.94e-39`` to ``3.4e38``).

    ``target_entropy`` and ``alpha_init`` set to other values than their defaults with the
    ``"policy"`` prior are ignored, with a warning (they are checked all the same).

    ``beta`` cannot be set with the uniform prior (``loss.beta = ...`` raises): it is the tuned
    ``alpha`` there, which :meth:`forward` writes into the actor at every call.

    Raises:
        TypeError: ``actor`` is no :class:`~torchrl_mcmc.HMCActor`; ``num_qvalue_nets``,
            ``alpha_init`` or ``target_entropy`` is no number (a ``bool`` included).
        ValueError: an argument out of its range, named with its value: ``alpha_init`` not
            finite, not ``> 0``, or ``0``/``inf`` (or of infinite reciprocal) in ``float32``;
            ``target_entropy`` not finite; ``num_qvalue_nets < 1``; an unknown option.

    Warns:
        UserWarning: ``actor`` was trained by another loss already: it now acts with this
            loss's critics, and the earlier loss's no longer act.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torch import nn
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor
        >>> from torchrl.modules import TanhNormal, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_mcmc import HMCActor, HMCLoss
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> policy = ProbabilisticActor(
        ...     TensorDictModule(nn.Sequential(MLP(in_features=4, out_features=4, num_cells=[32]),
        ...                                    NormalParamExtractor()),
        ...                      in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], distribution_class=TanhNormal, spec=spec)
        >>> critic = ValueOperator(MLP(in_features=6, out_features=1, num_cells=[32]),
        ...                        in_keys=["observation", "action"])
        >>> batch = TensorDict({
        ...     "observation": torch.randn(16, 4), "action": torch.rand(16, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(16, 4), "reward": torch.randn(16, 1),
        ...              "done": torch.zeros(16, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(16, 1, dtype=torch.bool)}}, batch_size=[16])

        The recommended configuration, SAC's objective through the chain:

        >>> actor = HMCActor(policy, critic, num_steps=3, prior="uniform")
        >>> loss = HMCLoss(actor)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> updater = SoftUpdate(loss, eps=0.995)
        >>> out = loss(batch)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_alpha', 'loss_qvalue']
        >>> out["alpha"].item(), "beta" in out.keys()
        (1.0, False)
        >>> (out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]).backward()
        >>> updater.step()
        >>> batch["td_error"].shape  # per sample: buffer.update_tensordict_priority(batch)
        torch.Size([16])

        The paper's: objective (17), the previous policy as prior, beta set from outside:

        >>> paper_actor = HMCActor(
        ...     policy, critic, num_steps=3, prior="policy", potential_critic="min"
        ... )
        >>> paper = HMCLoss(paper_actor, **HMCLoss.PAPER_KWARGS)
        >>> paper.make_value_estimator(gamma=0.99)
        >>> sorted(k for k in paper(batch).keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_flow', 'loss_qvalue']
        >>> paper.beta = 0.5  # what a PID controller does, in place
        >>> float(paper.actor.beta)
        0.5
    """

    #: The paper's configuration (objective 17 with eq. 11's alternating updates, the chain's
    #: next action in the TD target, no entropy term in it), with an actor whose prior is
    #: ``"policy"`` (and the twins' minimum in the potential); ``variant=paper`` of
    #: ``examples/hmc_sac.py``.
    PAPER_KWARGS: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"update_mode": "alternating", "next_action": "chain", "value_entropy": "none"}
    )

    def __init__(
        self,
        actor: HMCActor,
        *,
        num_qvalue_nets: int = 2,
        loss_function: str = "l2",
        update_mode: UpdateMode = "joint",
        value_entropy: ValueEntropy | None = None,
        next_action: NextAction = "base",
        target_entropy: float | Literal["auto"] = "auto",
        alpha_init: float = 1.0,
    ) -> None:
        if not isinstance(actor, HMCActor):
            raise TypeError(f"actor must be an HMCActor, got {type(actor).__name__}.")
        uniform = actor.prior_kind == "uniform"
        if value_entropy is None:
            value_entropy = "auxiliary" if uniform else "none"
        if value_entropy not in ("none", "auxiliary"):
            raise ValueError(
                f"value_entropy must be 'none' or 'auxiliary', got value_entropy={value_entropy!r}."
            )
        if next_action not in ("chain", "base"):
            raise ValueError(
                f"next_action must be 'chain' or 'base', got next_action={next_action!r}."
            )
        target_entropy = check_target_entropy(target_entropy)
        # alpha is the actor's beta: the same rule (float32, 1 / alpha finite), as log alpha.
        alpha_init = check_positive_float("alpha_init", alpha_init, reciprocal=True)
        if not uniform:
            _warn_if_set(target_entropy=target_entropy, alpha_init=alpha_init)
        if target_entropy == "auto":
            target_entropy = -float(actor.action_low.numel())
        super().__init__(
            actor,
            num_qvalue_nets=num_qvalue_nets,
            loss_function=loss_function,
            update_mode=update_mode,
        )
        self.value_entropy = value_entropy
        self.next_action = next_action
        self.target_entropy = float(target_entropy)
        if uniform:
            # SAC's temperature, trained on log alpha; the actor's beta follows it.
            self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha_init)))
            self._sync_alpha()
        else:
            self.log_alpha = None
        # theta: the policy's own Parameter objects (no copy), so the actor trains with them.
        self.convert_to_functional(actor.policy, "actor_network", create_target_params=False)
        self._convert_critics(num_qvalue_nets, create_target_params=True)

    # ------------------------------------------------------------------ parameter groups
    def alpha_parameters(self) -> Iterator[nn.Parameter]:
        """``log alpha`` (uniform prior; empty otherwise)."""
        return iter([] if self.log_alpha is None else [self.log_alpha])

    @property
    def tunes_alpha(self) -> bool:
        """Whether ``beta`` is SAC's tuned temperature (uniform prior) rather than set from
        outside (e.g. by a PID controller)."""
        return self.log_alpha is not None

    @torch.no_grad()
    def _sync_alpha(self) -> None:
        """Writes ``alpha`` into the actor's ``beta``, only when it changed: an in-place write
        would invalidate the graphs that already read ``beta`` in this update."""
        if self.log_alpha is not None:
            alpha = self.log_alpha.detach().exp().to(self.actor.beta.dtype)
            if not torch.equal(alpha, self.actor.beta):
                self.actor.beta.copy_(alpha)

    #: Every diagnostic :meth:`forward` may write; :attr:`out_keys` keeps the prior's.
    _DIAGNOSTICS = (
        "beta",
        "policy_distance",
        "entropy",
        "base_entropy",
        "entropy_chain",
        "entropy_squash",
        "elbo_gap",
        "critic_gain",
        "num_divergent",
        "step_size",
        "td_error",
    )
    #: The paper prior's own outputs: with the uniform prior ``beta`` is ``alpha``, and
    #: ``policy_distance`` minus an entropy.
    _POLICY_PRIOR_ONLY = ("beta", "policy_distance")

    @property
    def out_keys(self) -> list[str]:
        keys = super().out_keys
        if self.tunes_alpha:
            keys = [k for k in keys if k not in self._POLICY_PRIOR_ONLY]
            at = keys.index("loss_qvalue") + 1
            keys[at:at] = ["loss_alpha", "alpha"]
        return keys

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """All losses at the current parameters (``loss_alpha`` too with the uniform prior),
        and the detached diagnostics; writes the per-sample ``td_error`` into ``tensordict``."""
        self._sync_alpha()
        out = super().forward(tensordict)
        if self.tunes_alpha:
            out["loss_alpha"] = self.alpha_loss(out.get("entropy", None))
        return out

    def _multiplier(self) -> dict[str, Tensor]:
        """``alpha`` (SAC's name) with the uniform prior, ``beta`` with the paper's."""
        if self.tunes_alpha:
            return {"alpha": self.log_alpha.detach().exp()}
        return super()._multiplier()

    def alpha_loss(self, entropy: Tensor | None) -> Tensor:
        """SAC's temperature loss, ``-log alpha * (target_entropy - entropy)``, given the
        (detached) entropy estimate of the refined actions, ``-E[log q(aK)]``; zero, with zero
        gradients, when no chain of the batch was kept (``entropy=None``: none was measured)."""
        if entropy is None:
            return self.log_alpha * 0.0
        return -self.log_alpha * (self.target_entropy - entropy.detach())

    # ------------------------------------------------------------------ objective (17)
    def _chain(
        self, tensordict: TensorDictBase, freeze: Literal["h", "theta"] | None
    ) -> Chains[HMCSample]:
        """The differentiable chains of :meth:`_guarded_sample`; ``freeze`` names the
        parameters they must not reach."""
        critic = self.qvalue_network_params.detach()
        # preserve_module_state=False swaps the detached tensors in as they are; the default
        # re-wraps them as fresh Parameters that require grad, and the backward would compute
        # (then discard) a gradient for every frozen leaf.
        if freeze == "h":
            frozen = TensorDict.from_module(self.actor.flow).detach()
            with frozen.to_module(self.actor.flow, preserve_module_state=False):
                return self._guarded_sample(tensordict, critic)
        if freeze == "theta":
            frozen = self.actor_network_params.detach()
            with frozen.to_module(self.actor_network, preserve_module_state=False):
                return self._guarded_sample(tensordict, critic)
        return self._guarded_sample(tensordict, critic)

    def _guarded_sample(
        self, tensordict: TensorDictBase, critic: TensorDictBase
    ) -> Chains[HMCSample]:
        """The chain on every state, then on the states whose chains did not diverge (a
        divergent chain, or a non-finite ``Q(s, aK)``), to train on."""
        out = self.actor.sample(tensordict, explore=True, create_graph=True, critic_params=critic)
        states, value = tensordict, self._q_end(tensordict, out, critic)
        while (drop := self._drop_divergent(out, value)) is not None:
            # A diverged chain's backward multiplies zero upstream gradients by non-finite or
            # huge local derivatives (0 * inf = nan), even where its sample is left out, and
            # would poison every parameter's gradient. Run the other states again with the
            # same draws: the same chains, without the diverged ones in the graph.
            keep = ~drop
            xi = (out.u0 - out.loc) / out.scale
            states = states[keep]
            out = self.actor.sample(
                states,
                explore=True,
                create_graph=True,
                critic_params=critic,
                noise=(xi[keep].detach(), out.rho0[keep].detach()),
            )
            value = self._q_end(states, out, critic)
        return self._chains(tensordict, states, out, value)

    def _objective(
        self, tensordict: TensorDictBase, out: HMCSample, q: Tensor | None = None
    ) -> Tensor:
        """Per-state ``J`` of eq. 17 (critic detached, prior frozen).

        ``q``: ``Q(s, aK)`` (the actor's ``scored_value`` of the detached critics), if the
        caller has it already.
        """
        if q is None:
            q = self._q_end(tensordict, out)
        kl = out.log_prob - self.actor.log_prior(out.uK, out.prior_loc, out.prior_scale)
        return q - self.beta * kl - 0.5 * self.beta * out.rhoK.pow(2).sum(-1)

    def _q_end(
        self, tensordict: TensorDictBase, out: HMCSample, critic: TensorDictBase | None = None
    ) -> Tensor:
        """``Q(s, aK)``, the actor's scored value of the critics (their minimum by default):
        differentiable w.r.t. the action, not the critics (``critic``: their detached
        parameters, if the caller has them)."""
        critic = self.qvalue_network_params.detach() if critic is None else critic
        return self.actor.scored_value(self._qvalues(tensordict, out.action, critic))

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``-J`` for ``theta`` (and ``h`` too in ``"joint"`` mode), with diagnostics."""
        self._check_batch(tensordict, self.actor.in_keys)
        self._sync_alpha()
        freeze = "h" if self.update_mode == "alternating" else None
        chains = self._chain(tensordict, freeze)
        # One critic evaluation at aK serves the objective and, detached, the diagnostics.
        metadata = self._diagnostics(chains.states, chains.sample, chains.value.detach())
        metadata["num_divergent"] = chains.num_divergent.to(chains.value.dtype)
        objective = self._objective(chains.states, chains.sample, chains.value)
        return batch_mean(-objective), metadata

    def flow_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``-J`` for ``h`` only: the step sizes and gate nets."""
        self._check_batch(tensordict, self.actor.in_keys)
        self._sync_alpha()
        chains = self._chain(tensordict, "theta")
        return batch_mean(-self._objective(chains.states, chains.sample, chains.value)), {}

    @torch.no_grad()
    def _diagnostics(
        self, tensordict: TensorDictBase, out: HMCSample, q_end: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Detached diagnostics of chains (batch means); ``q_end``: ``Q(s, aK)`` if already
        known. Only ``step_size`` for no chain (every one of the batch diverged)."""
        metadata = {"step_size": self.actor.flow.step_size.mean()}
        if not tensordict.batch_size.numel():
            return metadata
        beta = self.beta
        log_prior_u0 = self.actor.log_prior(out.u0, out.prior_loc, out.prior_scale)
        log_prior_uK = self.actor.log_prior(out.uK, out.prior_loc, out.prior_scale)
        log_rho0 = standard_normal_log_prob(out.rho0)
        log_rhoK = standard_normal_log_prob(out.rhoK)
        params = self.qvalue_network_params
        low, high = self.actor.action_low, self.actor.action_high
        q_start = self.actor.scored_value(
            self._qvalues(tensordict, squash(out.u0, low, high), params)
        )
        if q_end is None:
            q_end = self.actor.scored_value(self._qvalues(tensordict, out.action, params))
        # ELBO (eq. 15) in units of Q / beta, at the chain's end and at its start (K = 0).
        elbo_end = q_end / beta + log_prior_uK + log_rhoK - out.log_prob - log_rho0
        elbo_start = q_start / beta + log_prior_u0 - out.log_prob
        if not self.tunes_alpha:
            distance = out.log_prob + log_rho0 - log_prior_uK - log_rhoK
            metadata["policy_distance"] = distance.mean()
        base_entropy = (0.5 * (1.0 + torch.log(2 * torch.pi * out.scale.pow(2)))).sum(-1)
        squash_part = squash_log_det(out.uK, low.to(out.uK.dtype), high.to(out.uK.dtype))
        metadata.update(
            {
                # -E[log q(aK)] in action space (auxiliary-variable estimate): what alpha tracks.
                "entropy": -self._log_q_action(out).mean(),
                "base_entropy": base_entropy.mean(),
                "entropy_chain": (log_rhoK - log_rho0).mean(),
                "entropy_squash": squash_part.mean(),
                "elbo_gap": (elbo_end - elbo_start).mean(),
                "critic_gain": (q_end - q_start).mean(),
            }
        )
        return metadata

    # ------------------------------------------------------------------ critic loss
    def _log_q_action(self, out: HMCSample) -> Tensor:
        """``log q(aK)`` in action space: ``log pi(u0) + log N(rho0) - log N(rhoK)
        - log|det da/du|(uK)`` (the auxiliary-variable estimate; with ``K = 0``, exactly the
        ``TanhNormal`` log-density of the action)."""
        low, high = self.actor.action_low, self.actor.action_high
        return (
            out.log_prob
            + standard_normal_log_prob(out.rho0)
            - standard_normal_log_prob(out.rhoK)
            - squash_log_det(out.uK, low.to(out.uK.dtype), high.to(out.uK.dtype))
        )

    @torch.no_grad()
    def _next_state_value(self, tensordict: TensorDictBase) -> Tensor:
        """``V(s')`` from the next action (the chain's, or the base policy's sample) and the
        target critics."""
        next_td = tensordict.get("next")
        if self.next_action == "chain":
            out = self.actor.sample(next_td, explore=True, critic_params=self.qvalue_network_params)
        else:
            out = self.actor.base_sample(next_td)
        value = self._qvalues(next_td, out.action, self.target_qvalue_network_params).min(0).values
        if self.value_entropy == "auxiliary":
            if self.actor.prior_kind == "uniform":
                log_q = self._log_q_action(out)
            else:
                log_q = (
                    out.log_prob
                    + standard_normal_log_prob(out.rho0)
                    - standard_normal_log_prob(out.rhoK)
                )
            value = value - self.beta * log_q
        return value

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """Twin-critic TD loss, the target's next action per ``next_action``; writes each
        sample's ``td_error`` into ``tensordict``."""
        self._check_batch(tensordict, self.in_keys)
        self._sync_alpha()
        return self._critic_td_loss(tensordict, self._next_state_value(tensordict))


def _warn_if_set(**given: Any) -> None:
    """Warns that the uniform prior's settings ``given`` away from :class:`HMCLoss`'s defaults
    are ignored (the actor's prior is ``"policy"``)."""
    defaults = inspect.signature(HMCLoss).parameters
    ignored = [
        f"{name}={value!r}" for name, value in given.items() if value != defaults[name].default
    ]
    if ignored:
        logger.warning(
            "HMCLoss: %s ignored: with the actor's prior='policy' beta is set from outside (a "
            "PID controller), not tuned to an entropy; they apply to prior='uniform'.",
            ", ".join(ignored),
        )
