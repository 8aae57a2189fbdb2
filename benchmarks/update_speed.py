"""Update cost and collection throughput of the training scripts' methods (docs/benchmarks.md §1).

One process builds each method exactly as its script does: the script's ``Method`` class
(:mod:`torchrl_mcmc.recipes`' ``SAC``, ``HMCSAC``, ``BestOfNSAC``, ``TD3``, ``LDTD3``, which
``examples/<script>.py`` trains) from the script's own Hydra configuration, composed
with the protocol's overrides (HalfCheetah-v4: observation 17, action 6; ``network.hidden=[256,
256]``; ``replay.batch_size=256``; gate nets 2x16). The timed call is the method's own
``update(batch)``, the one the training loop makes per sampled batch (critic, actor, chain
parameters, temperature, target update); ``begin_iteration``/``end_iteration`` (prior refresh,
PID) run once per round, as once per collected batch in training, and are timed apart.

Update cost: every variant (a configuration at one ``K``) is warmed up, then timed in
interleaved rounds of a few updates each, in an order that rotates every round, so that the
noise of a shared machine hits every variant alike. Per variant: the median (and mean) ms per
update; ``ratio``: the median over rounds of the variant's mean over SAC's mean in the same
round (TD3's for LD-TD3). HMC-SAC configurations (each at ``K`` = 1, 3, 5, 10):

* ``exact_alternating``: the paper's (``hmc.prior=policy``, alternating updates, the chain on
  ``s'`` for the TD target, the twins' minimum in the potential);
* ``exact_joint``: the same with ``hmc.update_mode=joint`` (one chain fewer);
* one cheaper lever each on top of ``exact_alternating``: ``potential_first``
  (``hmc.potential_critic=first``), ``next_base`` (``hmc.next_action=base``) and ``h_every_2``
  (``hmc.h_update_interval=2``; its per-update times are bimodal, read its mean and ratio);
* ``entropy``: the entropy prior (``hmc.prior=uniform``), otherwise as ``exact_alternating``;
* ``entropy_fast``: the entropy prior at the cheapest (joint, ``next_action=base``,
  ``potential_critic=first``);
* ``entropy_lcb``: ``entropy_fast`` with a pessimistic potential and objective
  (``hmc.potential_critic=mean_std``, ``hmc.pessimism=2``: both critics in every leapfrog step).

Controls and references: ``bon_sac`` with ``N = K + 1``, ``ld_td3`` (``K`` coupling layers)
against ``td3``, both TD3 methods with ``td3.policy_delay=1`` (every update a full one). Extra,
labelled rows at ``K = 5``: ``exact_eq11_sequential`` (eq. 11 strictly sequential: a critic
step, a theta step, then an h step at the new theta, through the same loss and optimisers), and
``exact_alternating_before_freeze_fix`` (``HMCLoss._chain`` swapping the frozen group in with
``to_module``'s default ``preserve_module_state=True``, as before the freeze fix: the freed
gradient work is the difference to ``exact_alternating``).

Profile: ``torch.profiler`` over updates of SAC and of the default configuration at ``K = 5``
(matrix-product time and calls per update) and the phases of the default's own update (critic
loss, actor loss, backward, optimiser steps, target update).

Collection: each script's acting policy (``Method.policy``) in the scripts' own collector
(``torchrl_mcmc.recipes.make_collector``) on HalfCheetah-v4, eagerly and with
``collector.compile_policy=true``, in interleaved batches after two untimed ones; the compile
warm-up is the one-time cost of the compiled collector's start (construction and first two
batches, less their time at its steady rate) beyond the eager one's.

Results go to ``benchmarks/results/update_speed.json`` (``--device cuda``: pass ``--output``),
rewritten after every stage so that an interrupted run keeps what it measured; ``--note``
appends the run's headline to the file's ``optimisations`` list, kept across runs.

Usage::

    python -m benchmarks.update_speed                        # everything (~20 min on 1 core)
    python -m benchmarks.update_speed --configs sac entropy_lcb --num-steps 5 --skip-collection
    python -m benchmarks.update_speed --check benchmarks/results/update_speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import LossModule, SACLoss, TD3Loss

from benchmarks.learning import VARIANTS
from torchrl_mcmc.objectives.common import MCMCPolicyLoss
from torchrl_mcmc.recipes import (
    CONFIG_DIR,
    HMCSAC,
    LDTD3,
    SAC,
    TD3,
    BestOfNSAC,
    LossMethod,
    make_collector,
    make_env,
)
from torchrl_mcmc.recipes.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent

logger = logging.getLogger("benchmarks.update_speed")

DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "update_speed.json"

ENV_NAME = "HalfCheetah-v4"
OBS_DIM, ACTION_DIM = 17, 6  # HalfCheetah-v4's shapes (checked against the env)
HEADLINE_K = 5  # the protocol's K: the summary's ratios and the extra rows
#: The default of ``examples/hmc_sac.py``, chosen from tiers M and MP (docs/method.md §2).
DEFAULT_CONFIGURATION = "entropy_lcb"
#: Above this update ratio at K = 5 the summary names what bounds the default (issue 12).
BOUND_RATIO = 2.0

#: The protocol's overrides of every script's configuration.
PROTOCOL = {
    "env": ENV_NAME,
    "network.hidden": [256, 256],
    "replay.batch_size": 256,
    "hmc.gate_hidden": 16,  # gate nets 2 x 16 (paper §5)
    "flow.hidden": 16,  # the Langevin coupling nets, gate-sized
    "td3.policy_delay": 1,  # TD3 and LD-TD3: every update moves actor and targets
}

#: The learning benchmark's screening variants timed here, under this benchmark's names.
SCREENING_VARIANTS = {
    "exact_alternating": "hmc_sac_paper",
    "entropy": "hmc_sac_ent",
    "entropy_fast": "hmc_sac_ent_fast",
    "entropy_lcb": "hmc_sac_ent_lcb",
}


def _screened(variant: str) -> dict[str, Any]:
    """A screening variant's overrides (``benchmarks/learning.py``'s ``VARIANTS``, which name
    every option that differs between them) as settings, with the h-update interval pinned."""
    script, overrides = VARIANTS[variant]
    if script != "hmc_sac":
        raise ValueError(f"variant {variant!r} runs {script!r}; only hmc_sac's are timed here")
    # Values typed as Hydra reads them ("2" a number, "false" a boolean), so that a result
    # file's settings record numbers, not strings.
    settings = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}
    return {"hmc.h_update_interval": 1, **settings}


_EXACT = _screened(SCREENING_VARIANTS["exact_alternating"])
#: HMC-SAC configurations: the screening variants, and single changes of the paper's one.
HMC_CONFIGURATIONS: dict[str, dict[str, Any]] = {
    **{name: _screened(variant) for name, variant in SCREENING_VARIANTS.items()},
    "exact_joint": {**_EXACT, "hmc.update_mode": "joint"},
    "potential_first": {**_EXACT, "hmc.potential_critic": "first"},
    "next_base": {**_EXACT, "hmc.next_action": "base"},
    "h_every_2": {**_EXACT, "hmc.h_update_interval": 2},
}


@dataclass(frozen=True)
class Configuration:
    """One row family of the benchmark: a script's method with a set of overrides.

    Attributes:
        script: the example script (its config name).
        method: the script's ``Method`` class (or a labelled subclass, for extra rows).
        settings: Hydra overrides beyond :data:`PROTOCOL`.
        num_steps_key: the override that sets ``K`` (``None``: no chain); its value is
            ``num_steps_offset + K``.
        baseline: the configuration the ratio divides by.
        ks: the ``K`` values it runs at (``None``: all of ``--num-steps``).
        extra: a labelled row that is not one of the scripts' own configurations.
        patch: applied to the built method (e.g. the code before an optimisation).
    """

    script: str
    method: type[LossMethod]
    settings: dict[str, Any] = field(default_factory=dict)
    num_steps_key: str | None = None
    num_steps_offset: int = 0
    baseline: str | None = "sac"
    ks: tuple[int, ...] | None = None
    extra: str | None = None
    patch: Callable[[LossMethod], None] | None = None


class _SequentialHMCSAC(HMCSAC):
    """HMC-SAC with eq. 11 strictly sequential: a critic step, a theta step (h frozen), then an
    h step (theta frozen) at the new theta. The script (``HMCSAC.update``) takes one step on
    the sum of the losses, all evaluated at the current parameters."""

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        loss_qvalue, _ = self.loss.qvalue_loss(batch)
        self._step(loss_qvalue, "critic")
        loss_actor, metadata = self.loss.actor_loss(batch)
        self._step(loss_actor, "policy")
        loss_flow, _ = self.loss.flow_loss(batch)
        self._step(loss_flow, "flow")
        self.target_updater.step()
        metrics = {"loss_qvalue": loss_qvalue, "loss_actor": loss_actor, "loss_flow": loss_flow}
        return {k: v.item() for k, v in {**metrics, **metadata}.items()}


def _chain_before_freeze_fix(
    self: MCMCPolicyLoss, tensordict: TensorDictBase, freeze: str | None
) -> Any:
    """``HMCLoss._chain`` as it was before the freeze fix: ``to_module``'s default
    ``preserve_module_state=True`` re-wraps the frozen, detached tensors as Parameters that
    require grad, so the backward computes (and then discards) a gradient for each of them."""
    critic = self.qvalue_network_params.detach()
    if freeze == "h":
        module, frozen = self.actor.flow, TensorDict.from_module(self.actor.flow).detach()
    elif freeze == "theta":
        module, frozen = self.actor_network, self.actor_network_params.detach()
    else:
        return self._guarded_sample(tensordict, critic)
    with frozen.to_module(module):
        return self._guarded_sample(tensordict, critic)


def _undo_freeze_fix(method: LossMethod) -> None:
    method.loss._chain = types.MethodType(_chain_before_freeze_fix, method.loss)


_HMC_K = ("hmc.num_steps", 0)
CONFIGURATIONS: dict[str, Configuration] = {
    "sac": Configuration("sac", SAC, baseline=None),
    **{
        name: Configuration("hmc_sac", HMCSAC, settings, *_HMC_K)
        for name, settings in HMC_CONFIGURATIONS.items()
    },
    "exact_eq11_sequential": Configuration(
        "hmc_sac",
        _SequentialHMCSAC,
        _EXACT,
        *_HMC_K,
        ks=(HEADLINE_K,),
        extra="eq. 11 strictly sequential (three backward passes and steps): not the script's",
    ),
    "exact_alternating_before_freeze_fix": Configuration(
        "hmc_sac",
        HMCSAC,
        _EXACT,
        *_HMC_K,
        ks=(HEADLINE_K,),
        extra="exact_alternating with HMCLoss._chain as before the freeze fix",
        patch=_undo_freeze_fix,
    ),
    "bon_sac": Configuration("bon_sac", BestOfNSAC, {}, "bon.num_samples", 1),
    "td3": Configuration("td3", TD3, baseline=None),
    "ld_td3": Configuration("ld_td3", LDTD3, {}, "flow.num_layers", 0, baseline="td3"),
}


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if isinstance(value, list | bool) else value}"


def compose_config(script: str, overrides: dict[str, Any]) -> DictConfig:
    """The script's configuration as Hydra composes it, with ``overrides`` (keys of sections
    the script does not have, e.g. ``hmc.*`` for ``sac``, are left out)."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        sections = set(compose(script).keys())
        wanted = [
            _override(k, v)
            for k, v in overrides.items()
            if k == "env" or (k.split(".")[0] in sections and "." in k)
        ]
        return compose(script, overrides=wanted)


@dataclass
class Variant:
    """A configuration at one ``K``, built: ``method.update`` is what is timed."""

    name: str
    configuration: str
    num_steps: int | None
    method: LossMethod
    cfg: DictConfig

    @property
    def update(self) -> Callable[[TensorDictBase], dict[str, float]]:
        return self.method.update


def variant_name(configuration: str, num_steps: int | None) -> str:
    return configuration if num_steps is None else f"{configuration}@K={num_steps}"


def build_variant(
    name: str,
    num_steps: int | None,
    device: torch.device,
    protocol: dict[str, Any] | None = None,
    configurations: dict[str, Configuration] | None = None,
) -> Variant:
    """Builds configuration ``name`` (of :data:`CONFIGURATIONS`, or ``configurations``) at
    ``K = num_steps`` with the script's own class."""
    spec = (CONFIGURATIONS if configurations is None else configurations)[name]
    overrides = {**(PROTOCOL if protocol is None else protocol), **spec.settings}
    if spec.num_steps_key is not None:
        overrides[spec.num_steps_key] = spec.num_steps_offset + num_steps
    cfg = compose_config(spec.script, overrides)
    env = make_env(cfg)  # shapes the networks, as the script's spec env does
    shapes = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    if cfg.env.name == ENV_NAME and shapes != (OBS_DIM, ACTION_DIM):
        raise RuntimeError(f"{ENV_NAME} has shapes {shapes}, not the protocol's 17 and 6.")
    try:
        method = spec.method(cfg, env, device)
    finally:
        env.close()
    if spec.patch is not None:
        spec.patch(method)
    k = num_steps if spec.num_steps_key is not None else None
    return Variant(variant_name(name, k), name, k, method, cfg)


# ------------------------------------------------------------------------------- measuring
def make_batches(
    count: int, batch_size: int, device: torch.device, generator: torch.Generator
) -> list[TensorDict]:
    """Replay-buffer-like batches with HalfCheetah-v4's shapes (actions in its box [-1, 1]);
    every variant sees the same ones in the same order."""
    n = batch_size

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    batches = []
    for _ in range(count):
        batch = TensorDict(
            {
                "observation": randn(n, OBS_DIM),
                "action": 2 * torch.rand(n, ACTION_DIM, generator=generator) - 1,
                "next": {
                    "observation": randn(n, OBS_DIM),
                    "reward": randn(n, 1),
                    "done": torch.zeros(n, 1, dtype=torch.bool),
                    "terminated": torch.zeros(n, 1, dtype=torch.bool),
                },
            },
            batch_size=[n],
        )
        batches.append(batch.to(device))
    return batches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_begin(device: torch.device) -> None:
    """A new update: CUDA graphs (``mode="reduce-overhead"``) may reuse the last one's output
    memory. Nothing to do elsewhere."""
    if device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()


def summarise(times_s: list[float]) -> dict[str, float]:
    ms = sorted(t * 1e3 for t in times_s)
    q1, median, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else ms * 3
    return {
        "median_ms": median,
        "mean_ms": statistics.fmean(ms),
        "iqr_ms": q3 - q1,
        "n": len(ms),
    }


def time_updates(
    variants: list[Variant],
    batches: list[TensorDict],
    updates: int,
    warmup: int,
    chunk: int,
    device: torch.device,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Times ``variant.update`` of each variant in interleaved rounds of ``chunk`` updates.

    Returns the statistics per variant (with the per-round means, ``_round_means``) and the
    variants that failed (name: error), which are left out of the rounds.
    """
    failed: dict[str, str] = {}
    live = []
    # Every batch once at least: a compiled loss specialises on a batch's keys, and SAC's
    # forward adds one (its TD error) to the batch it reads.
    warmup = max(warmup, len(batches))
    for variant in variants:
        try:
            for i in range(warmup):
                _step_begin(device)
                variant.update(batches[i % len(batches)])
            _sync(device)
        except Exception as err:  # a compiled variant that does not compile is reported
            logger.error("%s failed in its warm-up: %s: %s", variant.name, type(err).__name__, err)
            failed[variant.name] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
            continue
        live.append(variant)
        logger.info("warmed up %s", variant.name)
    if not live:
        return {}, failed
    rounds = max(1, math.ceil(updates / chunk))
    times: dict[str, list[float]] = {v.name: [] for v in live}
    round_means: dict[str, list[float]] = {v.name: [] for v in live}
    iteration_s: dict[str, list[float]] = {v.name: [] for v in live}
    for r in range(rounds):
        # Rotate the order so that no variant always runs first or after the heaviest one.
        order = live[r % len(live) :] + live[: r % len(live)]
        for variant in order:
            start = time.perf_counter()
            variant.method.begin_iteration()
            hooks = time.perf_counter() - start
            metrics, chunk_s = [], []
            for i in range(chunk):
                batch = batches[(r * chunk + i) % len(batches)]
                _step_begin(device)
                start = time.perf_counter()
                metrics.append(variant.update(batch))
                _sync(device)
                chunk_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            variant.method.end_iteration(metrics)
            iteration_s[variant.name].append(hooks + time.perf_counter() - start)
            times[variant.name].extend(chunk_s)
            round_means[variant.name].append(statistics.fmean(chunk_s))
        logger.info("round %d/%d done", r + 1, rounds)
    stats = {}
    for variant in live:
        stats[variant.name] = {
            **summarise(times[variant.name]),
            "per_iteration_hooks_ms": 1e3 * statistics.fmean(iteration_s[variant.name]),
            "_round_means": round_means[variant.name],
        }
    return stats, failed


def paired_ratio(stats: dict[str, dict[str, Any]], name: str, baseline: str) -> float:
    """Median over rounds of (this variant's mean / the baseline's mean in the same round)."""
    pairs = zip(stats[name]["_round_means"], stats[baseline]["_round_means"], strict=True)
    return statistics.median(a / b for a, b in pairs)


# ------------------------------------------------------------------------------- profile
_GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


@contextlib.contextmanager
def _timed_calls(obj: Any, names: tuple[str, ...], totals: dict[str, float]) -> Iterator[None]:
    """Adds the wall time of each call of ``obj.<name>`` to ``totals[name]`` (an instance
    attribute shadows the method for the duration)."""
    originals = {name: getattr(obj, name) for name in names if hasattr(obj, name)}

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

        return wrapper

    for name, fn in originals.items():
        object.__setattr__(obj, name, timed(name, fn))
    try:
        yield
    finally:
        for name in originals:
            object.__delattr__(obj, name)


def profile_update(
    variant: Variant, batches: list[TensorDict], updates: int, device: torch.device
) -> dict[str, Any]:
    """What one ``update`` of ``variant`` spends its time on.

    ``phases_ms``: wall time per update of the loss's critic loss, actor loss (with the chain)
    and h loss, of the backward pass (the method's ``_step`` less the optimiser steps), of the
    optimiser steps and of the target update; the rest is the loss's assembly and the
    scalars' ``.item()``. ``gemm``: matrix-product calls and self time per update
    (``torch.profiler``), the floor that no overhead removal lowers.
    """
    from torch.profiler import ProfilerActivity, profile

    method = variant.method
    loss = method.loss
    phases: dict[str, float] = {}
    loss_phases = ("qvalue_loss", "qvalue_v2_loss", "value_loss", "actor_loss", "flow_loss")
    with contextlib.ExitStack() as stack:
        stack.enter_context(_timed_calls(loss, loss_phases, phases))
        stack.enter_context(_timed_calls(method, ("_step",), phases))
        stack.enter_context(_timed_calls(method.target_updater, ("step",), phases))
        steps: dict[str, float] = {}  # every optimiser's step, summed under "step"
        for optim in method.optimizers.values():
            stack.enter_context(_timed_calls(optim, ("step",), steps))
        start = time.perf_counter()
        for i in range(updates):
            method.update(batches[i % len(batches)])
        _sync(device)
        total = time.perf_counter() - start
    optimiser_s = steps.get("step", 0.0)
    result = {
        "updates": updates,
        "update_ms": 1e3 * total / updates,
        "phases_ms": {
            "critic_loss": phases.get("qvalue_loss", 0.0)
            + phases.get("qvalue_v2_loss", 0.0)
            + phases.get("value_loss", 0.0),
            "actor_loss (chain and objective)": phases.get("actor_loss", 0.0),
            "h_loss (alternating)": phases.get("flow_loss", 0.0),
            "backward (and zero_grad)": phases.get("_step", 0.0) - optimiser_s,
            "optimiser_steps": optimiser_s,
            "target_update": phases.get("step", 0.0),
        },
    }
    result["phases_ms"] = {k: 1e3 * v / updates for k, v in result["phases_ms"].items()}
    accounted = sum(result["phases_ms"].values())
    result["phases_ms"]["rest (loss assembly, diagnostics, .item())"] = (
        result["update_ms"] - accounted
    )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(updates):
            method.update(batches[i % len(batches)])
        _sync(device)
    events = prof.key_averages()
    gemm = [e for e in events if e.key in _GEMMS]
    total_self = sum(e.self_cpu_time_total for e in events)
    gemm_self = sum(e.self_cpu_time_total for e in gemm)
    result["gemm"] = {
        "calls_per_update": sum(e.count for e in gemm) / updates,
        "self_cpu_ms_per_update": gemm_self / 1e3 / updates,
        "share_of_self_cpu_time": gemm_self / total_self if total_self else None,
        "by_op": {e.key: e.count / updates for e in gemm},
    }
    if device.type == "cuda":
        result["gemm"]["device_ms_per_update"] = (
            sum(e.device_time_total for e in gemm) / 1e3 / updates
        )
        result["device_ms_per_update"] = (
            sum(e.self_device_time_total for e in events) / 1e3 / updates
        )
    result["top_ops_self_cpu_ms_per_update"] = {
        e.key: e.self_cpu_time_total / 1e3 / updates
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    }
    return result


# ------------------------------------------------------------------------------- compiled losses
def _critic_loss_name(loss: LossModule) -> str:
    """The method of ``loss`` that computes the critics' TD loss (its ``forward`` and the
    scripts call it through the instance, so an instance attribute replaces it)."""
    if isinstance(loss, SACLoss):
        return "qvalue_v2_loss"
    if isinstance(loss, TD3Loss):
        return "value_loss"
    if isinstance(loss, MCMCPolicyLoss):
        return "qvalue_loss"
    raise TypeError(f"no known critic loss in {type(loss).__name__}")


def compile_critic_loss(method: LossMethod, mode: str | None) -> None:
    """Replaces the method's critic loss by ``torch.compile``'s (``mode="reduce-overhead"``:
    with CUDA graphs); the chain of the actor loss stays eager (double backward)."""
    loss = method.loss
    name = _critic_loss_name(loss)
    object.__setattr__(loss, name, torch.compile(getattr(loss, name), mode=mode))


#: ``--compile-critic-loss`` choices: ``torch.compile`` modes.
COMPILE_MODES = {"compile": None, "cudagraphs": "reduce-overhead"}
#: The configurations timed with a compiled critic loss too (at K = 5).
COMPILED_CONFIGURATIONS = ("sac", DEFAULT_CONFIGURATION)


def compiled_configurations(modes: list[str]) -> dict[str, Configuration]:
    """``<name>+<mode>``: :data:`COMPILED_CONFIGURATIONS` with a compiled critic loss, each
    against SAC compiled the same way."""
    out = {}
    for mode in modes:
        for name in COMPILED_CONFIGURATIONS:
            spec = CONFIGURATIONS[name]
            out[f"{name}+{mode}"] = replace(
                spec,
                baseline=None if name == "sac" else f"sac+{mode}",
                ks=(HEADLINE_K,),
                extra=f"{name} with torch.compile'd critic loss (mode {COMPILE_MODES[mode]})",
                patch=functools.partial(compile_critic_loss, mode=COMPILE_MODES[mode]),
            )
    return out


# ------------------------------------------------------------------------------- collection
#: Acting policies timed in collection: a configuration (its script's ``Method.policy``).
COLLECTION_POLICIES = ("sac", DEFAULT_CONFIGURATION, "exact_alternating", "td3", "ld_td3")
#: The policy each one's frames/s is divided by (the rest: SAC's; None: no ratio).
COLLECTION_BASELINES = {"ld_td3": "td3", "td3": None}
COMPILED = "+compile"


def time_collection(
    names: list[str],
    device: torch.device,
    frames: int,
    frames_per_batch: int,
    compiled: bool,
    protocol: dict[str, Any],
) -> dict[str, Any]:
    """Env frames/s of each acting policy in the scripts' collector, interleaved batches.

    Each policy is collected eagerly and (``compiled``) with ``collector.compile_policy=true``
    (entries ``<name>+compile``). The collector's construction and first two batches are the
    untimed warm-up; less what those batches take at the steady rate, it is the start-up cost,
    and the compiled collector's start-up beyond the eager one's is the compile warm-up.
    """
    entries: dict[str, dict[str, Any]] = {}
    iterators = {}
    collectors = []
    # The default's compiled collector first: its warm-up is then not shortened by kernels
    # that another policy's compile left in the compiler's caches.
    order = sorted(names, key=lambda n: n != DEFAULT_CONFIGURATION)
    builds = [(n, True) for n in order if compiled] + [(n, False) for n in order]
    for name, compile_policy in builds:
        key = name + (COMPILED if compile_policy else "")
        variant = build_variant(name, HEADLINE_K, device, protocol)
        cfg = variant.cfg.copy()
        cfg.collector.frames_per_batch = frames_per_batch
        cfg.collector.total_frames = 10**12  # stopped by this loop
        cfg.collector.init_random_frames = 0
        cfg.collector.num_workers = 1
        cfg.collector.compile_policy = compile_policy
        start = time.perf_counter()
        collector = make_collector(cfg, variant.method.policy, device, seed=len(collectors))
        iterator = iter(collector)
        next(iterator)
        next(iterator)
        entries[key] = {"warmup_s": time.perf_counter() - start}
        collectors.append(collector)
        iterators[key] = iterator
        logger.info("collection warm-up of %s: %.1f s", key, entries[key]["warmup_s"])
    rounds = max(1, math.ceil(frames / frames_per_batch))
    seconds = dict.fromkeys(iterators, 0.0)
    counted = dict.fromkeys(iterators, 0)
    round_fps: dict[str, list[float]] = {key: [] for key in iterators}
    keys = list(iterators)
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            batch = next(iterators[key])
            elapsed = time.perf_counter() - start
            seconds[key] += elapsed
            counted[key] += batch.numel()
            round_fps[key].append(batch.numel() / elapsed)
        logger.info("collection round %d/%d done", r + 1, rounds)
    for collector in collectors:
        collector.shutdown()
    for key in keys:
        entries[key].update(frames=counted[key], seconds=seconds[key])
        entries[key]["fps"] = counted[key] / seconds[key]
        # The one-time cost: the warm-up less what its two batches take at the steady rate.
        entries[key]["startup_s"] = (
            entries[key]["warmup_s"] - 2 * frames_per_batch / (entries[key]["fps"])
        )
    for name in names:
        if name + COMPILED in entries:
            entries[name + COMPILED]["compile_warmup_s"] = (
                entries[name + COMPILED]["startup_s"] - entries[name]["startup_s"]
            )
    ratios = {}
    for name in names:
        base = COLLECTION_BASELINES.get(name, "sac")
        if base is None or name == base or base not in names:
            continue
        for suffix, base_suffix in (("", ""), (COMPILED, COMPILED), (COMPILED, "")):
            if name + suffix in entries and base + base_suffix in entries:
                # Paired per round, as the update ratios: the load of a shared machine drifts.
                pairs = zip(round_fps[name + suffix], round_fps[base + base_suffix], strict=True)
                ratios[f"{name}{suffix}/{base}{base_suffix}"] = statistics.median(
                    a / b for a, b in pairs
                )
    return {
        "env": ENV_NAME,
        "num_steps": HEADLINE_K,
        "frames_per_batch": frames_per_batch,
        "collector": "torchrl_mcmc.recipes.make_collector (the scripts' own), one env, "
        "init_random_frames=0",
        "policies": entries,
        "ratios": ratios,
        "ratio_note": "median over rounds of (frames/s of the policy / frames/s of its baseline "
        "in the same round)",
    }


# ------------------------------------------------------------------------------- result file
class ResultFile:
    """The JSON result, rewritten after every stage; keeps the ``optimisations`` history and
    the earlier analysis of the exact method's floor (``bounds``)."""

    KEPT = ("optimisations", "bounds")

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        previous = {}
        if path.exists():
            try:
                previous = json.loads(path.read_text())
            except json.JSONDecodeError:
                logger.warning("%s is not valid JSON; its history is lost.", path)
        self.data = {**header, "status": "running"}
        self.data.update({k: previous[k] for k in self.KEPT if k in previous})

    def write(self, **updates: Any) -> None:
        self.data.update(updates)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)


#: What a complete result file holds: checked by ``--check`` (and the tests).
SUMMARY_KEYS = (
    "default",
    "default_settings",
    "candidates",
    "update_ratio_k5",
    "collection_ratio",
    "collection_ratio_eager",
    "compile_warmup_s",
)


def check_result(data: dict[str, Any], *, require_collection: bool = True) -> list[str]:
    """What is missing or inconsistent in a result file's data (empty: it is complete)."""
    problems = []
    for key in ("command", "git_commit", "date", "versions", "device", "cpu", "threads"):
        if key not in data:
            problems.append(f"provenance: no {key!r}")
    if data.get("status") != "complete":
        problems.append(f"status is {data.get('status')!r}, not 'complete'")
    summary = data.get("summary", {})
    for key in SUMMARY_KEYS:
        if key not in summary:
            problems.append(f"summary: no {key!r}")
    configurations = data.get("update", {}).get("configurations", {})
    default = summary.get("default")
    if default not in configurations:
        problems.append(f"summary's default {default!r} has no update entry")
    for name, entry in configurations.items():
        for k, row in entry.get("K", {}).items():
            for field_ in ("median_ms", "mean_ms", "n"):
                if field_ not in row:
                    problems.append(f"update {name} K={k}: no {field_!r}")
            if entry.get("baseline") and not (
                isinstance(row.get("ratio"), float) and row["ratio"] > 0
            ):
                problems.append(f"update {name} K={k}: no positive ratio")
    ratio = summary.get("update_ratio_k5")
    if isinstance(ratio, float) and ratio > BOUND_RATIO and "bound" not in summary:
        problems.append(f"update_ratio_k5 {ratio:.2f} > {BOUND_RATIO} and no 'bound' named")
    if require_collection:
        compiled = data.get("config", {}).get("compile_collection", True)
        key = "collection_ratio" if compiled else "collection_ratio_eager"
        if not isinstance(summary.get(key), float):
            problems.append(f"summary: {key} is not measured")
    return problems


# ------------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-steps", type=int, nargs="+", default=[1, 3, 5, 10], help="K")
    parser.add_argument(
        "--configs", nargs="+", default=list(CONFIGURATIONS), help="configurations to time"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--updates", type=int, default=200, help="timed updates per variant")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates per variant")
    parser.add_argument("--chunk", type=int, default=10, help="updates per variant and round")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--profile-updates", type=int, default=20, help="0: no profile")
    parser.add_argument(
        "--compile-critic-loss",
        nargs="*",
        choices=list(COMPILE_MODES),
        default=[],
        help="also time these variants of sac, td3 and the default with a compiled critic loss",
    )
    parser.add_argument("--collection-frames", type=int, default=5000, help="timed frames each")
    parser.add_argument("--frames-per-batch", type=int, default=250)
    parser.add_argument(
        "--collection-policies", nargs="+", default=list(COLLECTION_POLICIES), help="configs"
    )
    parser.add_argument("--skip-collection", action="store_true")
    parser.add_argument(
        "--compile-collection",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also collect with collector.compile_policy=true",
    )
    parser.add_argument(
        "--fresh-compile-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile into empty compiler caches (the compile warm-up of a first run)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--note", default=None, help="append this run to 'optimisations'")
    parser.add_argument("--check", type=Path, default=None, help="check a result file; exit")
    return parser.parse_args(argv)


def plan(
    names: list[str], num_steps: list[int], configurations: dict[str, Configuration]
) -> list[tuple[str, int | None]]:
    """The (configuration, K) pairs to build: ``names`` and every baseline they need."""
    unknown = sorted(set(names) - set(configurations))
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; known: {sorted(configurations)}")
    wanted = list(dict.fromkeys(names))
    for name in list(wanted):
        baseline = configurations[name].baseline
        if baseline is not None and baseline not in wanted:
            wanted.insert(wanted.index(name), baseline)
    pairs: list[tuple[str, int | None]] = []
    for name in wanted:
        spec = configurations[name]
        if spec.num_steps_key is None:
            pairs.append((name, None))
        else:
            pairs += [(name, k) for k in (num_steps if spec.ks is None else spec.ks)]
    return pairs


def _update_table(
    stats: dict[str, dict[str, Any]],
    variants: list[Variant],
    failed: dict[str, str],
    specs: dict[str, Configuration],
) -> dict[str, Any]:
    configurations: dict[str, Any] = {}
    for variant in variants:
        if variant.name not in stats:
            continue
        name = variant.configuration
        spec = specs[name]
        baseline = spec.baseline
        entry = configurations.setdefault(
            name,
            {
                "script": f"examples/{spec.script}.py",
                "method": f"{type(variant.method).__module__}.{type(variant.method).__name__}",
                "settings": dict(spec.settings),
                "baseline": baseline,
                "K": {},
            },
        )
        if spec.num_steps_key is not None:
            entry["K_setting"] = f"{spec.num_steps_key} = K + {spec.num_steps_offset}"
        if spec.extra:
            entry["extra"] = spec.extra
        if name in SCREENING_VARIANTS:
            entry["screening_variant"] = SCREENING_VARIANTS[name]
        row = {k: v for k, v in stats[variant.name].items() if not k.startswith("_")}
        if baseline in stats:
            row["ratio"] = paired_ratio(stats, variant.name, baseline)
            row["ratio_of_medians"] = row["median_ms"] / stats[baseline]["median_ms"]
            row["ratio_of_means"] = row["mean_ms"] / stats[baseline]["mean_ms"]
        key = "-" if variant.num_steps is None else str(variant.num_steps)
        entry["K"][key] = row
    return {"configurations": configurations, "failed": failed, "ratio_note": RATIO_NOTE}


RATIO_NOTE = (
    "ratio: median over rounds of (mean ms of the variant / mean ms of the baseline in the same "
    "round); ratio_of_medians and ratio_of_means over all timed updates"
)


def _record_freeze_fix(result: ResultFile, update: dict[str, Any]) -> None:
    """Appends the freeze fix's before/after (measured in this run) to ``optimisations``."""
    before = update["configurations"].get("exact_alternating_before_freeze_fix", {}).get("K", {})
    after = update["configurations"].get("exact_alternating", {}).get("K", {})
    k = str(HEADLINE_K)
    if k not in before or k not in after:
        return
    result.data.setdefault("optimisations", []).append(
        {
            "note": "freeze fix: HMCLoss._chain swaps the frozen group in with "
            "preserve_module_state=False (no gradient computed for its leaves); "
            "exact_alternating at K=5, before and after measured interleaved in one run",
            "date": result.data["date"],
            "git_commit": result.data["git_commit"],
            "update_ms": {"before": before[k]["median_ms"], "after": after[k]["median_ms"]},
            "update_ratio": {"before": before[k]["ratio"], "after": after[k]["ratio"]},
        }
    )


def _summary(
    update: dict[str, Any], collection: dict[str, Any] | None, profile: dict[str, Any] | None
) -> dict[str, Any]:
    configurations = update["configurations"]

    def ratio_k5(name: str) -> float | None:
        row = configurations.get(name, {}).get("K", {}).get(str(HEADLINE_K))
        return None if row is None else row.get("ratio")

    summary: dict[str, Any] = {
        "default": DEFAULT_CONFIGURATION,
        "default_settings": HMC_CONFIGURATIONS[DEFAULT_CONFIGURATION],
        "default_note": "examples/hmc_sac.py's default, chosen from the MuJoCo tiers M and MP "
        "(benchmarks/learning.py; docs/method.md, 'The defaults, and why')",
        "candidates": [
            {"name": name, "settings": settings, "update_ratio_k5": ratio_k5(name)}
            for name, settings in HMC_CONFIGURATIONS.items()
            if name in configurations
        ],
        "update_ratio_k5": ratio_k5(DEFAULT_CONFIGURATION),
        "update_ratio_target": 1.5,
        "collection_ratio": None,
        "collection_ratio_eager": None,
        "compile_warmup_s": None,
    }
    if collection is not None:
        ratios, policies = collection["ratios"], collection["policies"]
        summary["collection_ratio"] = ratios.get(f"{DEFAULT_CONFIGURATION}{COMPILED}/sac{COMPILED}")
        summary["collection_ratio_eager"] = ratios.get(f"{DEFAULT_CONFIGURATION}/sac")
        summary["collection_ratio_note"] = (
            "the default's actor over SAC's, both collected with collector.compile_policy=true "
            "(the scripts' default); _eager: both eager"
        )
        summary["compile_warmup_s"] = policies.get(DEFAULT_CONFIGURATION + COMPILED, {}).get(
            "compile_warmup_s"
        )
    ratio = summary["update_ratio_k5"]
    if ratio is not None and ratio > BOUND_RATIO and profile is not None:
        summary["bound"] = describe_bound(profile)
    return summary


def describe_bound(profile: dict[str, Any]) -> str:
    """What the profile says bounds the default's update, in one paragraph."""
    sac, default = profile.get("sac"), profile.get(f"{DEFAULT_CONFIGURATION}@K={HEADLINE_K}")
    if sac is None or default is None:
        return "not profiled"
    phases = ", ".join(f"{k} {v:.1f} ms" for k, v in default["phases_ms"].items())
    return (
        f"{DEFAULT_CONFIGURATION} at K={HEADLINE_K}: {default['update_ms']:.1f} ms per update "
        f"(profiled) against SAC's {sac['update_ms']:.1f} ms. Phases: {phases}. Matrix "
        f"products: {default['gemm']['calls_per_update']:.0f} calls, "
        f"{default['gemm']['self_cpu_ms_per_update']:.1f} ms per update against SAC's "
        f"{sac['gemm']['calls_per_update']:.0f} calls, "
        f"{sac['gemm']['self_cpu_ms_per_update']:.1f} ms: the chain's K+1 critic evaluations "
        "(forward and closed-form action gradient) and the backward through them are matrix "
        "products at batch 256 that no overhead removal lowers."
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.check is not None:
        data = json.loads(args.check.read_text())
        collected = bool(data.get("config", {}).get("collection_policies"))
        problems = check_result(data, require_collection=collected)
        for problem in problems:
            print(f"{args.check}: {problem}")
        print(f"{args.check}: {'complete' if not problems else 'INCOMPLETE'}")
        return 1 if problems else 0
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.fresh_compile_cache:
        # Read when the first compile happens: every compile of this run starts cold.
        fresh = Path(tempfile.mkdtemp(prefix="update_speed_compile_"))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(fresh / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(fresh / "triton")
    if args.updates < 200:
        logger.warning("--updates %d < 200: below the protocol's minimum.", args.updates)
    protocol = {**PROTOCOL, "network.hidden": args.hidden, "replay.batch_size": args.batch_size}
    command = [sys.executable, "-m", "benchmarks.update_speed", *argv]
    result = ResultFile(args.output, provenance(command=command, device=device))
    result.write(
        config={
            "protocol_overrides": protocol,
            "num_steps": args.num_steps,
            "updates": args.updates,
            "warmup": args.warmup,
            "chunk": args.chunk,
            "configurations": args.configs,
            "compile_critic_loss": args.compile_critic_loss,
            "collection_policies": None if args.skip_collection else args.collection_policies,
            "compile_collection": args.compile_collection,
            "fresh_compile_cache": args.fresh_compile_cache,
            "collection_frames": args.collection_frames,
            "seed": args.seed,
            "timed": "the script's Method.update(batch), as the training loop calls it; "
            "begin_iteration/end_iteration once per round (per_iteration_hooks_ms)",
        }
    )

    # --- update cost: every (configuration, K) variant, interleaved in the same rounds
    batches = make_batches(8, args.batch_size, device, torch.Generator().manual_seed(args.seed))

    def time_stage(names: list[str], configurations: dict[str, Configuration]) -> list[Variant]:
        torch.manual_seed(args.seed)
        variants = [
            build_variant(n, k, device, protocol, configurations)
            for n, k in plan(names, args.num_steps, configurations)
        ]
        stats, failed = time_updates(
            variants, batches, args.updates, args.warmup, args.chunk, device
        )
        table = _update_table(stats, variants, failed, configurations)
        update["configurations"].update(table["configurations"])
        update["failed"].update(failed)
        result.write(update=update)
        return variants

    update: dict[str, Any] = {"configurations": {}, "failed": {}, "ratio_note": RATIO_NOTE}
    variants = time_stage(args.configs, CONFIGURATIONS)

    profile = None
    if args.profile_updates > 0:
        profile = {
            variant.name: profile_update(variant, batches, args.profile_updates, device)
            for variant in variants
            if variant.name in ("sac", f"{DEFAULT_CONFIGURATION}@K={HEADLINE_K}")
        }
        result.write(profile=profile)
    del variants
    result.write(summary=_summary(update, None, profile))
    _record_freeze_fix(result, update)

    # --- collection throughput
    collection = None
    if not args.skip_collection:
        torch.manual_seed(args.seed)
        collection = time_collection(
            list(dict.fromkeys(args.collection_policies)),
            device,
            args.collection_frames,
            args.frames_per_batch,
            args.compile_collection,
            protocol,
        )
        result.write(collection=collection)
        result.write(summary=_summary(update, collection, profile))

    # --- compiled critic losses (last: the slowest to warm up, and the likeliest to fail)
    if args.compile_critic_loss:
        compiled = compiled_configurations(args.compile_critic_loss)
        time_stage([n for n in compiled if n.split("+")[0] in args.configs], compiled)

    if args.note:
        result.data.setdefault("optimisations", []).append(
            {
                "note": args.note,
                "date": result.data["date"],
                "git_commit": result.data["git_commit"],
                "update_ratio_k5": {
                    name: entry["K"][str(HEADLINE_K)]["ratio"]
                    for name, entry in update["configurations"].items()
                    if "ratio" in entry["K"].get(str(HEADLINE_K), {})
                },
                "collection_ratios": collection["ratios"] if collection else None,
            }
        )
    result.write(status="complete")
    if args.fresh_compile_cache:
        shutil.rmtree(fresh, ignore_errors=True)
    print(format_table(update, collection))
    return 0


def format_table(update: dict[str, Any], collection: dict[str, Any] | None) -> str:
    lines = ["", "update cost (median ms per update; ratio to the baseline, paired per round)"]
    lines.append(f"{'variant':<44}{'median ms':>11}{'mean ms':>9}{'ratio':>8}")
    for name, entry in update["configurations"].items():
        for k, row in entry["K"].items():
            label = name if k == "-" else f"{name}@K={k}"
            ratio = f"{row['ratio']:>8.2f}" if "ratio" in row else f"{'-':>8}"
            lines.append(f"{label:<44}{row['median_ms']:>11.2f}{row['mean_ms']:>9.2f}{ratio}")
    if collection:
        lines += ["", f"collection ({collection['env']} frames/s; warm-up s: 2 batches)"]
        for name, entry in collection["policies"].items():
            lines.append(f"{name:<44}{entry['fps']:>11.1f}{entry['warmup_s']:>9.1f}")
        lines += [""] + [f"{k:<44}{v:>11.2f}" for k, v in collection["ratios"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
