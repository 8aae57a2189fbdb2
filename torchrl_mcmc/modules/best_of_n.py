"""``BestOfNActor``: the control for the chain — ``N`` samples of the policy, the best by the
critic, at the same number of critic evaluations per action as ``K = N - 1`` chain steps.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.data import Composite

from torchrl_mcmc.mcmc.settings import check_integer
from torchrl_mcmc.modules._fast_paths import plain_policy, policy_dist
from torchrl_mcmc.modules.common import MCMCActorBase, unique_keys

__all__ = ["BestOfNActor"]


class BestOfNActor(MCMCActorBase):
    """A stochastic actor that acts with the best of ``num_samples`` policy samples.

    Per state, ``num_samples`` actions are drawn from the wrapped policy and the one with the
    highest ``min_i Q_i(s, a)`` is taken. It spends the critic evaluations of an HMC chain of
    ``K = num_samples - 1`` steps (``K + 1`` evaluations of each critic) on plain selection,
    which is what a gain of the chain must beat to be credited to its dynamics.

    In deterministic mode (evaluation) the candidates are the policy's mode and
    ``num_samples - 1`` samples, so the selection still spends its critic calls. It shares the
    critic hand-over of the package's actors: a loss binds the critics it trains with
    :meth:`bind_critic_params` (:class:`~torchrl_mcmc.objectives.BestOfNSACLoss` does), and the
    actor's ``state_dict`` carries them.

    Non-finite values follow the package's policy (docs/method.md, "Non-finite values"): an
    observation with a NaN or an inf raises a ``ValueError`` naming its key and rows, and a
    candidate whose critic value is NaN or infinite is never the best (where none is finite,
    the first is taken, as a divergent chain falls back to its start, and a warning is logged).
    The densities are the policy distribution's own, as SAC's are (that makes ``N = 1`` exactly
    SAC): their scale floor is the policy's (``NormalParamExtractor``'s ``scale_lb``). The
    state dict holds ``num_samples`` and ``action_dim`` (``None`` for a policy without a spec),
    and a state saved with others is refused on load.

    Args:
        policy: a TorchRL probabilistic actor (e.g. SAC's ``ProbabilisticActor`` with a
            ``TanhNormal``).
        critic: a critic reading the state and the action key, writing one value.

    Keyword Args:
        num_samples: ``N >= 1`` candidates per state (``1`` is the plain policy).
        action_key: where the action is written; defaults to the policy's sample key.

    Raises:
        TypeError: ``policy`` is no probabilistic TensorDict module, ``critic`` no
            ``TensorDictModuleBase``, or ``num_samples`` no integer (a ``bool`` included).
        ValueError: ``num_samples < 1``, a critic that does not read the action or whose
            ``MLP`` has more than one output feature. At call time, a ``KeyError`` names the
            input entries (``in_keys``) missing, and a ``ValueError`` the non-finite ones.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torch import nn
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal
        >>> from torchrl.modules import ValueOperator
        >>> policy = ProbabilisticActor(
        ...     TensorDictModule(nn.Sequential(MLP(in_features=3, out_features=2, num_cells=[16]),
        ...                                    NormalParamExtractor()),
        ...                      in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], distribution_class=TanhNormal,
        ...     spec=Bounded(-1.0, 1.0, shape=(1,)))
        >>> critic = ValueOperator(MLP(in_features=4, out_features=1, num_cells=[16]),
        ...                        in_keys=["observation", "action"])
        >>> actor = BestOfNActor(policy, critic, num_samples=6)
        >>> td = actor(TensorDict({"observation": torch.randn(5, 3)}, batch_size=[5]))
        >>> td["action"].shape
        torch.Size([5, 1])
    """

    def __init__(
        self,
        policy: ProbabilisticTensorDictSequential,
        critic: TensorDictModuleBase,
        *,
        num_samples: int = 6,
        action_key: NestedKey | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(policy, ProbabilisticTensorDictSequential):
            raise TypeError(
                "policy must be a tensordict ProbabilisticTensorDictSequential (e.g. torchrl's "
                f"ProbabilisticActor), got {type(policy).__name__}."
            )
        num_samples = check_integer("num_samples", num_samples, 1)
        if action_key is None:
            action_key = policy.dist_sample_keys[0]
        self._check_critic(critic, action_key, "Pass action_key=... or build the critic on it.")
        self.policy = policy
        self._set_critic(critic, action_key)
        self.register_module("critic_params", None)
        self.num_samples = num_samples
        spec = getattr(policy, "spec", None)
        has_spec = isinstance(spec, Composite) and action_key in spec.keys(True)
        self.action_dim: int | None = spec[action_key].shape[-1] if has_spec else None
        self._plain_policy = plain_policy(policy)
        self.in_keys = unique_keys([*policy.in_keys, *self._critic_state_keys])
        self.out_keys = [action_key]

    def settings(self) -> dict[str, Any]:
        """``num_samples`` and ``action_dim``: saved in the state dict and checked on load."""
        return {"num_samples": self.num_samples, "action_dim": self.action_dim}

    def select(self, tensordict: TensorDictBase, explore: bool = True) -> tuple[Tensor, Tensor]:
        """The chosen actions ``[*batch, d]`` and their policy log-densities ``[*batch]``.

        Keyword Args:
            explore: all candidates sampled (``True``), or the mode and ``N - 1`` samples.
        """
        with torch.no_grad():
            dist = policy_dist(self.policy, tensordict, self._plain_policy)
            candidates = dist.sample((self.num_samples,))  # [N, *batch, d]
            if not explore:
                # TorchRL's distributions name their mode deterministic_sample; torch's, mode.
                has_own = hasattr(type(dist), "deterministic_sample")
                candidates[0] = dist.deterministic_sample if has_own else dist.mode
            log_prob = dist.log_prob(candidates)  # [N, *batch]
            if self.num_samples == 1:
                return candidates[0], log_prob[0]
            # All candidates of all states in one flat critic batch.
            states = tensordict.select(*self._critic_state_keys)
            flat = states.expand(self.num_samples, *states.batch_size).reshape(-1)
            values = self.critic_value(flat, candidates.reshape(-1, candidates.shape[-1]))
            values = values.reshape(log_prob.shape)
            # argmax would pick a NaN: a candidate of non-finite value never wins, and where
            # none is finite the first (all -inf) is taken.
            scored = values.where(values.isfinite(), -torch.inf)
            self._warn_unscored(scored)
            best = scored.argmax(0)  # [*batch]
            index = best.unsqueeze(0).unsqueeze(-1).expand(1, *candidates.shape[1:])
            action = candidates.gather(0, index).squeeze(0)
            return action, log_prob.gather(0, best.unsqueeze(0)).squeeze(0)

    def _warn_unscored(self, scored: Tensor) -> None:
        """Logs the states with no candidate of finite value (not inside ``torch.compile``, as
        :meth:`_warn_divergent`)."""
        if torch.compiler.is_compiling():
            return
        unscored = scored.isneginf().all(0)
        if unscored.any():
            logging.getLogger(__name__).warning(
                "BestOfNActor: the critic's value is not finite for any candidate at %d of %d "
                "states; they take the first candidate.",
                int(unscored.sum()),
                unscored.numel(),
            )

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._check_inputs(tensordict)
        action, _ = self.select(tensordict, explore=self._explores())
        return tensordict.set(self.action_key, action)
