"""Sample-efficiency benchmark (docs/benchmarks.md §3): run a tier's grid, then aggregate it.

    python benchmarks/learning.py run --tier Q              # runs what is not finished yet
    python benchmarks/learning.py run --tier M --methods sac hmc_sac --seeds 0
    python benchmarks/learning.py aggregate --tier Q        # tables, IQM CIs, curves
    python benchmarks/learning.py status --tier M           # finished / partial / pending
    python benchmarks/learning.py collect --tier Q          # re-copy finished runs' results
    python benchmarks/learning.py seeds --tier MA           # seed-by-seed tables (markdown)

Each run is one example script (``examples/<method>.py``) in its own run directory under
``runs/benchmarks/<tier>/<method>/<env>/seed<N>`` (git-ignored: checkpoints hold replay
buffers). ``run`` skips runs whose ``summary.json`` exists, resumes runs that have a
checkpoint (``resume=<run dir>``) and starts the rest, one after another, so an interrupted grid
continues where it stopped and never redoes a finished run. A finished run's ``summary.json``
and evaluation curve are copied to ``benchmarks/results/learning/<tier>/`` for committing.
``aggregate`` reads those copies only. Ctrl-C or ``kill <pid>`` of the grid is passed on to the
run in progress, which checkpoints before it exits; the grid stops, and ``run`` continues it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "benchmarks"
RESULTS = ROOT / "benchmarks" / "results" / "learning"

logger = logging.getLogger("benchmarks.learning")


@dataclass(frozen=True)
class Tier:
    envs: tuple[str, ...]
    frames: int
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    eval_interval: int
    #: Hydra overrides every run of the tier shares (same for method and baseline).
    overrides: tuple[str, ...] = ()
    #: ``(tier, method)``: another tier's finished runs of the same protocol, aggregated here
    #: as ``"<method> (<tier>)"`` over this tier's first ``frames`` only (none are run). Where
    #: this tier runs the same method on other seeds, ``"<method> (<this> + <tier>)"`` pools both.
    compare_with: tuple[tuple[str, str], ...] = ()
    #: ``(method, seeds)``: methods run on fewer (or other) seeds than ``seeds``.
    method_seeds: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def seeds_of(self, method: str) -> tuple[int, ...]:
        return dict(self.method_seeds).get(method, self.seeds)


#: Variants: a method name that is an example script run with extra Hydra overrides. The
#: override ``method=<name>`` names the run's directory and results after the variant.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "hmc_sac_k0": ("hmc_sac", ("hmc.num_steps=0",)),
    "hmc_sac_nogate": ("hmc_sac", ("hmc.gated=false",)),
    "hmc_sac_fixedbeta": ("hmc_sac", ("pid.enabled=false",)),
    "hmc_sac_joint": ("hmc_sac", ("hmc.update_mode=joint",)),
    "hmc_sac_auxent": ("hmc_sac", ("hmc.value_entropy=auxiliary",)),
    "hmc_sac_target05": ("hmc_sac", ("pid.target=0.5",)),
    # Screening (every option named, so that a change of the script's defaults changes no
    # variant). The paper's configuration: objective (17) with the previous policy as prior,
    # PID on beta, alternating updates, the chain for the TD target's action, the twins' min.
    "hmc_sac_paper": (
        "hmc_sac",
        (
            "hmc.prior=policy",
            "hmc.update_mode=alternating",
            "hmc.next_action=chain",
            "hmc.potential_critic=min",
        ),
    ),
    # The entropy prior: SAC's objective with the chain as an exact-density flow (alpha tuned).
    "hmc_sac_ent": (
        "hmc_sac",
        (
            "hmc.prior=uniform",
            "hmc.update_mode=alternating",
            "hmc.next_action=chain",
            "hmc.potential_critic=min",
        ),
    ),
    # LD-TD3 (docs/method.md §1.8). The paper's configuration: the PID controls beta. The
    # diagnosis (tier QL): the flow off (K = 0, the trust region and PID alone), and beta fixed
    # at its initial value (the flow and the trust region without the controller: the
    # script's default since that diagnosis).
    "ld_td3_pid": ("ld_td3", ("pid.enabled=true",)),
    "ld_td3_k0": ("ld_td3", ("flow.num_layers=0", "pid.enabled=true")),
    "ld_td3_fixedbeta": ("ld_td3", ("pid.enabled=false",)),
    # The paper's baseline (paper §5): SAC with its temperature fixed at alpha = 0.05.
    "sac_paper": ("sac", ("sac.fixed_alpha=true", "sac.alpha_init=0.05")),
    # SAC's schedule check (tier MB): updates every 50 frames instead of every 1,000, closer to
    # the per-step updates of the published baselines; same updates per frame.
    "sac_fpb50": ("sac", ("collector.frames_per_batch=50",)),
    # The entropy prior at the cheapest: joint updates, SAC's next action, one critic in U.
    "hmc_sac_ent_fast": (
        "hmc_sac",
        (
            "hmc.prior=uniform",
            "hmc.update_mode=joint",
            "hmc.next_action=base",
            "hmc.potential_critic=first",
        ),
    ),
    # Against critic exploitation (chain_gain on tier S, HalfCheetah seed 1: the chain's critic
    # gain is not confirmed by rollouts): the fast entropy variant with a lower confidence
    # bound in the potential and the objective, mean - 2 std over the twins (= their minimum
    # minus half their spread).
    "hmc_sac_ent_lcb": (
        "hmc_sac",
        (
            "hmc.prior=uniform",
            "hmc.update_mode=joint",
            "hmc.next_action=base",
            "hmc.potential_critic=mean_std",
            "hmc.pessimism=2.0",
        ),
    ),
}


#: Tier QA's ablations of HMC-SAC; later variants belong to the tiers that name them.
_ABLATIONS = (
    "hmc_sac_k0",
    "hmc_sac_nogate",
    "hmc_sac_fixedbeta",
    "hmc_sac_joint",
    "hmc_sac_auxent",
    "hmc_sac_target05",
)

#: docs/benchmarks.md §3. Tier Q uses the quick preset's data schedule (the only way 20 runs fit
#: in about an hour of 2 CPU cores); M and L use the paper-scale defaults. Tier Q evaluates
#: every 1k frames, so that its final score (13k-15k) measures the end and its area under the
#: curve the speed of learning.
_QUICK = Tier(
    envs=("Pendulum-v1",),
    frames=15_000,
    seeds=(0, 1, 2, 3, 4),
    methods=(
        "sac",
        "bon_sac",
        "hmc_sac_paper",
        "hmc_sac_ent",
        "hmc_sac_ent_fast",
        "hmc_sac_ent_lcb",
        "td3",
    ),
    eval_interval=1_000,
    overrides=("preset=quick",),
)
#: The first Pendulum protocol (an evaluation every 5k frames): tiers QA and QW were measured
#: under it and keep their own runs; they are never mixed with tier Q's.
_QUICK_5K = dataclasses.replace(
    _QUICK, eval_interval=5_000, methods=("sac", "hmc_sac", "td3", "ld_td3")
)
TIERS = {
    "Q": _QUICK,
    # docs/benchmarks.md §3 ablations: which part of HMC-SAC earns what, at the 5k spacing.
    "QA": dataclasses.replace(_QUICK_5K, seeds=(0, 1, 2), methods=("sac", "hmc_sac", *_ABLATIONS)),
    # Where a gap exists by design (docs/method.md §1.4): tier Q with *linear* policies (critics
    # unchanged), the RL counterpart of the mechanism benchmark. Same networks for method and
    # baseline: SAC gets the same linear policy the HMC chain starts from.
    "QW": dataclasses.replace(_QUICK_5K, overrides=(*_QUICK.overrides, "network.policy_hidden=[]")),
    # LD-TD3's diagnosis on tier Q's protocol (docs/benchmarks.md §3): which part of the
    # method keeps it from learning where TD3 does.
    "QL": dataclasses.replace(
        _QUICK, methods=("td3", "ld_td3_pid", "ld_td3_k0", "ld_td3_fixedbeta")
    ),
    # MuJoCo screen (30k frames, an evaluation every 3k): the variants against SAC and the
    # best-of-N control at the paper-scale networks and schedule, before tier M's hours.
    "S": Tier(
        envs=("HalfCheetah-v4", "Hopper-v4"),
        frames=30_000,
        seeds=(0, 1),
        methods=(
            "sac",
            "bon_sac",
            "hmc_sac_ent_fast",
            "hmc_sac_ent_lcb",
            "hmc_sac_ent",
            "hmc_sac_paper",
        ),
        eval_interval=3_000,
    ),
    # The Langevin flow's MuJoCo screen against TD3.
    "SL": Tier(
        envs=("HalfCheetah-v4",),
        frames=30_000,
        seeds=(0, 1),
        methods=("td3", "ld_td3"),
        eval_interval=3_000,
    ),
    "M": Tier(
        envs=("Hopper-v4", "HalfCheetah-v4"),
        frames=100_000,
        seeds=(0, 1, 2),
        methods=("sac", "hmc_sac", "bon_sac"),
        eval_interval=10_000,
        # Tier MS's SAC seeds 3-4 on Hopper: each method's ratio to SAC over five seeds too.
        compare_with=(("MS", "sac"),),
    ),
    # Tier M's baseline check: does SAC's schedule (1,000 frames collected, then 1,000 updates)
    # hold it below the published SAC? The first 50k frames of tier M's protocol with updates
    # every 50 frames, to compare evaluation by evaluation with tier M's `sac` runs.
    "MB": Tier(
        envs=("HalfCheetah-v4", "Hopper-v4"),
        frames=50_000,
        seeds=(0, 1, 2),
        methods=("sac_fpb50",),
        eval_interval=10_000,
        compare_with=(("M", "sac"),),
    ),
    # Tier M's stall (HalfCheetah seed 1: the default's chain grows and climbs the critic's
    # errors) against tier S's candidate fix, the pessimistic potential: tier M's protocol, read
    # with tier M's runs. Seed 1 first: the seed it is meant to mend.
    "MP": Tier(
        envs=("HalfCheetah-v4", "Hopper-v4"),
        frames=100_000,
        seeds=(1, 0, 2),
        methods=("hmc_sac_ent_lcb",),
        eval_interval=10_000,
        compare_with=(("M", "sac"), ("M", "bon_sac"), ("M", "hmc_sac")),
    ),
    # Tier M's baseline check on Hopper, where its three seeds sit below the published SAC:
    # the same SAC on two more seeds, read with tier M's, to tell seed luck from a lag.
    "MS": Tier(
        envs=("Hopper-v4",),
        frames=100_000,
        seeds=(3, 4),
        methods=("sac",),
        eval_interval=10_000,
        compare_with=(("M", "sac"),),
    ),
    # Ant-v4, the paper's third task, on tier M's protocol: HMC-SAC (the script's default)
    # against SAC and best-of-N on five seeds (Ant's spread at 100k is about 70 % of the mean),
    # and the paper's own pair (its method against its fixed-alpha SAC) on three.
    "MA": Tier(
        envs=("Ant-v4",),
        frames=100_000,
        seeds=(0, 1, 2, 3, 4),
        methods=("sac", "hmc_sac", "bon_sac", "sac_paper", "hmc_sac_paper"),
        eval_interval=10_000,
        method_seeds=(("sac_paper", (0, 1, 2)), ("hmc_sac_paper", (0, 1, 2))),
    ),
    "L": Tier(
        envs=("Hopper-v4", "HalfCheetah-v4", "Ant-v4"),
        frames=500_000,
        seeds=(0, 1, 2, 3, 4),
        methods=("sac", "hmc_sac", "bon_sac", "td3", "ld_td3"),
        eval_interval=10_000,
    ),
}
#: The baseline each script is compared with (its variants inherit it): the IQM ratio's
#: denominator, and a dashed line in the curves.
BASELINE = {"hmc_sac": "sac", "bon_sac": "sac", "ld_td3": "td3"}
#: The control at the same critic evaluations per action: a chain's gain counts only against it
#: (a second IQM ratio, beside the one to the baseline).
CONTROL = {"hmc_sac": "bon_sac"}
#: A variant's own baseline, beside its script's: the paper's method against the paper's SAC.
PAIRED = {"hmc_sac_paper": "sac_paper"}


def run_dir(tier: str, method: str, env: str, seed: int) -> Path:
    return RUNS / tier / method / env / f"seed{seed}"


def result_path(tier: str, method: str, env: str, seed: int) -> Path:
    return RESULTS / tier / method / env / f"seed{seed}.json"


def _portable(path: Path) -> str:
    """``path`` relative to the repository when inside it (commands run from the root)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _unless_given(extra: list[str], key: str, value: object) -> tuple[str, ...]:
    """The override ``key=value``, or nothing where the caller's ``extra`` sets ``key``."""
    return () if any(a.startswith(f"{key}=") for a in extra) else (f"{key}={value}",)


def command(tier_name: str, method: str, env: str, seed: int, extra: list[str]) -> list[str]:
    """The example-script command of one run, to be run from the repository root."""
    tier = TIERS[tier_name]
    directory = _portable(run_dir(tier_name, method, env, seed))
    script, variant = VARIANTS.get(method, (method, ()))
    cmd = [
        "python",
        f"examples/{script}.py",
        *tier.overrides,
        *((*variant, f"method={method}") if method in VARIANTS else ()),
        f"env={env}",
        f"seed={seed}",
        f"collector.total_frames={tier.frames}",
        f"eval.interval_frames={tier.eval_interval}",
        "eval.episodes=10",
        "progress_bar=false",
        f"hydra.run.dir={directory}",
        # One thread per run (docs/benchmarks.md): runs go two at a time on two cores, and a
        # second OpenMP thread per run oversubscribes them (spin-waits cost ~10x per update).
        *_unless_given(extra, "threads", 1),
        # A checkpoint at every evaluation (the scripts' default is every 50k frames): a stopped
        # run that never got its own checkpoint out loses one evaluation interval, not an hour.
        *_unless_given(extra, "checkpoint.interval_frames", tier.eval_interval),
        *extra,
    ]
    if (run_dir(tier_name, method, env, seed) / "latest_checkpoint.txt").exists():
        cmd.append(f"resume={directory}")
    return cmd


def _status(tier_name: str, method: str, env: str, seed: int) -> str:
    if result_path(tier_name, method, env, seed).exists():
        return "finished"
    if (run_dir(tier_name, method, env, seed) / "latest_checkpoint.txt").exists():
        return "partial"
    return "pending"


def _grid(tier_name: str, methods, envs, seeds):
    tier = TIERS[tier_name]
    for seed in seeds or tier.seeds:
        for env in envs or tier.envs:
            for method in methods or tier.methods:
                if seed in tier.seeds_of(method):
                    yield method, env, seed


def run_grid(args: argparse.Namespace) -> int:
    with _GridStop() as stop:
        return _run_grid(args, stop)


def _run_grid(args: argparse.Namespace, stop: _GridStop) -> int:
    failures = 0
    for method, env, seed in _grid(args.tier, args.methods, args.envs, args.seeds):
        status = _status(args.tier, method, env, seed)
        if status == "finished":
            logger.info("skip %s %s seed %d: finished", method, env, seed)
            continue
        if stop.signum is not None:
            # Came between two runs (while one was collected, say): start no other.
            logger.warning(
                "stopped by %s before %s %s seed %d; run the grid again to continue",
                signal.Signals(stop.signum).name,
                method,
                env,
                seed,
            )
            return 128 + stop.signum
        directory = run_dir(args.tier, method, env, seed)
        if status == "pending" and directory.exists():
            shutil.rmtree(directory)  # started but never checkpointed: nothing to keep
        directory.parent.mkdir(parents=True, exist_ok=True)
        cmd = command(args.tier, method, env, seed, args.overrides)
        logger.info("%s %s seed %d (%s): %s", method, env, seed, status, " ".join(cmd))
        started = time.monotonic()
        with open(directory.parent / f"seed{seed}.log", "a") as log:
            code, stopped = _run_child([sys.executable, *cmd[1:]], log, stop)
        if stopped:
            # 128 + N is the run's own exit after its checkpoint; anything else (a second,
            # direct signal kills it: exit -N) left no checkpoint of this stop.
            saved = code == 128 + stopped
            logger.warning(
                "stopped by %s: %s %s seed %d %s (exit %d); run the grid again to continue",
                signal.Signals(stopped).name,
                method,
                env,
                seed,
                "checkpointed" if saved else "stopped before writing a checkpoint",
                code,
            )
            return 128 + stopped
        if code != 0 or not (directory / "summary.json").exists():
            logger.error("%s %s seed %d failed with exit code %d", method, env, seed, code)
            failures += 1
            continue
        _collect(args.tier, method, env, seed)
        logger.info("done in %.0f s", time.monotonic() - started)
    return 1 if failures else 0


class _GridStop:
    """SIGINT and SIGTERM to the grid, for as long as it runs: the first is passed on to the
    run in progress, once (it then finishes its iteration, writes a checkpoint and exits), and
    the grid starts no further run. Held for the whole grid, not per run, so that a signal
    between two runs stops the grid instead of killing it while it copies a result or after it
    has started the next run in a session of its own, where nothing would stop that run."""

    def __init__(self) -> None:
        #: The first signal received, ``None`` until one is.
        self.signum: int | None = None
        self._child: subprocess.Popen | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _GridStop:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            self._forward()

    def _forward(self) -> None:
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(self.signum)

    def watch(self, proc: subprocess.Popen | None) -> None:
        """The run the first signal goes to (``None``: no run in progress); a signal that came
        just before it started is passed on now."""
        self._child = proc
        if proc is not None and self.signum is not None:
            self._forward()


def _run_child(cmd: list[str], log, stop: _GridStop) -> tuple[int, int | None]:
    """Runs one training process under the grid's ``stop``; returns its exit code and the
    signal that stopped the grid (``None`` if none did).

    The run gets its own session, so a terminal's Ctrl-C reaches it only through ``stop``: a
    second, direct signal would make it stop without its checkpoint.
    """
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
    )
    stop.watch(proc)
    try:
        while True:
            try:
                # Short waits: a signal delivered to another thread still gets handled
                # (Python runs handlers in the main thread between bytecodes only).
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        stop.watch(None)
    return code, stop.signum


def _collect(tier_name: str, method: str, env: str, seed: int) -> None:
    """Copies a finished run's summary (with its config and diagnostics) into the results."""
    directory = run_dir(tier_name, method, env, seed)
    summary = json.loads((directory / "summary.json").read_text())
    summary["config"] = (directory / "config.yaml").read_text()
    summary["diagnostics"] = _diagnostics(directory)
    target = result_path(tier_name, method, env, seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(summary, indent=1))


def _diagnostics(directory: Path) -> dict[str, dict[str, float]]:
    """Per training scalar (beta, policy distance, ELBO gap, ...): its mean over the first and
    the last quarter of the logged iterations, and its last value."""
    out = {}
    for path in sorted((directory / "logs" / "train" / "scalars" / "train").glob("*.csv")):
        values = np.loadtxt(path, delimiter=",", ndmin=2)[:, 1]
        quarter = max(1, len(values) // 4)
        out[path.stem] = {
            "first_quarter_mean": float(values[:quarter].mean()),
            "last_quarter_mean": float(values[-quarter:].mean()),
            "last": float(values[-1]),
        }
    return out


def collect_finished(tier_name: str) -> int:
    """(Re)copies every finished run of the tier into the results; returns how many."""
    count = 0
    for method, env, seed in _grid(tier_name, None, None, None):
        if (run_dir(tier_name, method, env, seed) / "summary.json").exists():
            _collect(tier_name, method, env, seed)
            count += 1
    return count


# ---------------------------------------------------------------------------- aggregation
def load_results(tier_name: str) -> dict[tuple[str, str], list[dict]]:
    """``{(env, method): [summary, ...]}`` of the finished runs, sorted by seed.

    A run counts under the method its place in the grid names (what its overrides make it; its
    ``config`` records them all), which is its ``method`` too unless it was made before a
    variant got its name: LD-TD3's PID runs made while the PID was the script's default.
    """
    results = _own_results(tier_name)
    tier = TIERS[tier_name]
    for other, method in tier.compare_with:
        # The other tier's own runs only: two tiers may read each other (M and MS).
        for (env, name), runs in _own_results(other).items():
            if name != method or env not in tier.envs:
                continue
            runs = [_truncated(r, tier.frames) for r in runs]
            results[(env, _read_name(method, other))] = runs
            own = results.get((env, method), [])
            # The same method on other seeds (tier MS's SAC beside tier M's): one row of all
            # of them, so that a figure over every seed is backed by one aggregate.
            if own and not {r["seed"] for r in own} & {r["seed"] for r in runs}:
                results[(env, _pooled_name(method, tier_name, other))] = own + runs
    for runs in results.values():
        runs.sort(key=lambda s: s["seed"])
    return results


def _own_results(tier_name: str) -> dict[tuple[str, str], list[dict]]:
    """``{(env, method): [summary, ...]}`` of the tier's own finished runs, in grid order."""
    results: dict[tuple[str, str], list[dict]] = {}
    for method, env, seed in _grid(tier_name, None, None, None):
        path = result_path(tier_name, method, env, seed)
        if path.exists():
            summary = json.loads(path.read_text())
            results.setdefault((summary["env"], method), []).append(summary)
    return results


def _truncated(summary: dict, frames: int) -> dict:
    """A run's summary as if it had stopped at ``frames``: its evaluations up to there, and the
    final score recomputed from them (the mean of the last 3, as every run's)."""
    history = [h for h in summary["eval_history"] if h["frames"] <= frames]
    if len(history) == len(summary["eval_history"]):
        return summary  # nothing to cut: its wall time and diagnostics stand
    return {
        **summary,
        "eval_history": history,
        "final_return": float(np.mean([h["eval_return"] for h in history[-3:]])),
        "frames": history[-1]["frames"],
        "wall_time_s": None,  # not measured at the cut
        "diagnostics": {},  # the run's diagnostics cover all of it
    }


def iqm_with_ci(scores: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Interquartile mean over runs and its 95% stratified-bootstrap CI (rliable)."""
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    point, interval = rly.get_interval_estimates(
        {"m": scores.reshape(-1, 1)},
        lambda x: np.array([metrics.aggregate_iqm(x)]),
        reps=reps,
    )
    return float(point["m"][0]), float(interval["m"][0, 0]), float(interval["m"][1, 0])


def iqm_ratio_with_ci(
    scores: np.ndarray, baseline: np.ndarray, reps: int = 2000, seed: int = 0
) -> tuple[float, float, float] | None:
    """IQM(scores) / IQM(baseline) and its 95% stratified-bootstrap CI, the runs of each
    resampled on their own (independent seeds; rliable's independent bootstrap). ``None``
    unless every baseline run is positive, so that no resampled IQM of the baseline is zero
    or negative: a ratio of returns that can be negative reads nothing."""
    from rliable import library as rly
    from rliable import metrics

    if baseline.min() <= 0:
        return None
    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    point, interval = rly.get_interval_estimates(
        {"ratio": [scores.reshape(-1, 1), baseline.reshape(-1, 1)]},
        lambda x, y: np.array([metrics.aggregate_iqm(x) / metrics.aggregate_iqm(y)]),
        reps=reps,
    )
    return float(point["ratio"][0]), float(interval["ratio"][0, 0]), float(interval["ratio"][1, 0])


def _ratios(tier_name: str, table: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """Per env, each method's IQM ratio to its script's baseline (``BASELINE``) and to its
    control (``CONTROL``), where the tier has them: its own runs of them, with the baseline
    also pooled over more seeds (:func:`_pooled_name`), or else those it reads from another
    tier (:func:`_read_name`)."""
    compare_with = TIERS[tier_name].compare_with
    out: dict[str, dict[str, dict]] = {}
    for env, methods in table.items():
        for method, row in methods.items():
            script = VARIANTS.get(method, (method, ()))[0]
            bases = []
            for base in (BASELINE.get(script), CONTROL.get(script), PAIRED.get(method)):
                others = [other for other, compared in compare_with if compared == base]
                if base in methods:
                    bases += [base, *(_pooled_name(base, tier_name, o) for o in others)]
                else:
                    bases += [_read_name(base, other) for other in others]
            for base in bases:
                if base not in methods:
                    continue
                ratio = iqm_ratio_with_ci(
                    np.array(row["final_scores"]), np.array(methods[base]["final_scores"])
                )
                if ratio is not None:
                    out.setdefault(env, {})[f"{method} / {base}"] = {
                        "iqm_ratio": ratio[0],
                        "ci95": [ratio[1], ratio[2]],
                        "seeds": [len(row["final_scores"]), len(methods[base]["final_scores"])],
                    }
    return out


def _read_name(method: str, other: str) -> str:
    """The row of ``method``'s runs that a tier reads from tier ``other``."""
    return f"{method} ({other})"


def _pooled_name(method: str, tier_name: str, other: str) -> str:
    """The row that pools ``method``'s runs of tier ``tier_name`` with those of ``other``."""
    return f"{method} ({tier_name} + {other})"


def aggregate(tier_name: str) -> dict:
    """Per env and method: final score mean ± std, IQM [95% CI], and the learning curves."""
    tier = TIERS[tier_name]
    table: dict[str, dict[str, dict]] = {}
    for (env, method), runs in sorted(load_results(tier_name).items()):
        finals = np.array([r["final_return"] for r in runs])
        last = np.array([r["eval_history"][-1]["eval_return"] for r in runs])
        # Area under the curve: the mean of all evaluations (sample efficiency).
        aucs = np.array([np.mean([h["eval_return"] for h in r["eval_history"]]) for r in runs])
        iqm, low, high = iqm_with_ci(finals)
        auc_iqm, auc_low, auc_high = iqm_with_ci(aucs)
        table.setdefault(env, {})[method] = {
            "seeds": [r["seed"] for r in runs],
            "final_scores": finals.tolist(),
            "mean": float(finals.mean()),
            "std": float(finals.std(ddof=1)) if len(finals) > 1 else 0.0,
            "iqm": iqm,
            "iqm_ci95": [low, high],
            "auc_scores": aucs.tolist(),
            "auc_mean": float(aucs.mean()),
            "auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
            "auc_iqm": auc_iqm,
            "auc_iqm_ci95": [auc_low, auc_high],
            "last_eval_mean": float(last.mean()),
            "last_eval_std": float(last.std(ddof=1)) if len(last) > 1 else 0.0,
            "frames": [r["frames"] for r in runs],
            "wall_time_s": [r["wall_time_s"] for r in runs],
            "diagnostics_last_quarter_mean": _mean_diagnostics(runs),
            "diagnostics_last_quarter_per_seed": _diagnostics_per_seed(runs),
            # Runs before the scripts recorded their commit say so.
            "git_commits": sorted({r.get("git_commit", "not recorded") for r in runs}),
            "versions": runs[0].get("versions"),
            "cpu": sorted({r.get("cpu", "not recorded") for r in runs}),
            "threads": sorted({r.get("threads") for r in runs}),
        }
    pending = [
        {
            "method": m,
            "env": e,
            "seed": s,
            "status": _status(tier_name, m, e, s),
            "command": " ".join(command(tier_name, m, e, s, [])),
        }
        for m, e, s in _grid(tier_name, None, None, None)
        if _status(tier_name, m, e, s) != "finished"
    ]
    out = {
        "tier": tier_name,
        "command": " ".join(sys.argv),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "protocol": {
            "envs": tier.envs,
            "frames": tier.frames,
            "seeds": tier.seeds,
            "methods": tier.methods,
            "eval_interval_frames": tier.eval_interval,
            "eval_episodes": 10,
            "final_score": "mean of the last 3 deterministic evaluations",
            "area_under_curve": "mean of all deterministic evaluations",
            "overrides": tier.overrides,
        },
        "results": table,
        # Percentile bootstrap over each method's and its baseline's runs, 2000 resamples.
        "iqm_ratios": _ratios(tier_name, table),
        "pending": pending,
        "continue_with": f"python benchmarks/learning.py run --tier {tier_name}",
    }
    (RESULTS.parent / f"learning_{tier_name}.json").write_text(json.dumps(out, indent=1))
    for env in table:
        plot_curves(tier_name, env)
    return out


def _mean_diagnostics(runs: list[dict]) -> dict[str, float]:
    """Seed-mean of each diagnostic's last-quarter mean (runs collected before diagnostics
    existed contribute nothing)."""
    keys = sorted({k for r in runs for k in r.get("diagnostics", {})})
    return {
        k: float(
            np.mean(
                [
                    r["diagnostics"][k]["last_quarter_mean"]
                    for r in runs
                    if k in r.get("diagnostics", {})
                ]
            )
        )
        for k in keys
    }


def _diagnostics_per_seed(runs: list[dict]) -> dict[str, list[float | None]]:
    """Each diagnostic's last-quarter mean per run, in seed order (``None`` where a run did
    not record it)."""
    keys = sorted({k for r in runs for k in r.get("diagnostics", {})})
    return {
        k: [
            r["diagnostics"][k]["last_quarter_mean"] if k in r.get("diagnostics", {}) else None
            for r in runs
        ]
        for k in keys
    }


def plot_curves(tier_name: str, env: str) -> Path:
    """Mean ± std evaluation return against frames, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    results = load_results(tier_name)
    # The other tier's part of a pooled row is drawn in the pooled line.
    parts_of_pooled = {
        _read_name(method, other)
        for other, method in TIERS[tier_name].compare_with
        if (env, _pooled_name(method, tier_name, other)) in results
    }
    for (run_env, method), runs in sorted(results.items()):
        if run_env != env or method in parts_of_pooled:
            continue
        frames = sorted({h["frames"] for r in runs for h in r["eval_history"]})
        curves = np.array([[_at(r["eval_history"], f) for f in frames] for r in runs], dtype=float)
        mean, std = np.nanmean(curves, 0), np.nanstd(curves, 0)
        line = "--" if method.split(" (")[0] in BASELINE.values() else "-"
        ax.plot(frames, mean, line, label=f"{method} (n={len(runs)})")
        ax.fill_between(frames, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("environment frames")
    ax.set_ylabel("evaluation return (mean ± std over seeds)")
    ax.set_title(f"{env}, tier {tier_name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = RESULTS.parent / f"learning_{tier_name}_{env}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _at(history: list[dict], frames: int) -> float:
    for h in history:
        if h["frames"] == frames:
            return h["eval_return"]
    return float("nan")


def print_table(out: dict) -> None:
    for env, methods in out["results"].items():
        print(f"\n{env} (tier {out['tier']}, {out['protocol']['frames']} frames)")
        print(f"{'method':10s} {'n':>2s} {'mean':>9s} {'std':>8s} {'IQM':>9s}  95% CI")
        for method, r in methods.items():
            low, high = r["iqm_ci95"]
            print(
                f"{method:10s} {len(r['seeds']):2d} {r['mean']:9.1f} {r['std']:8.1f} "
                f"{r['iqm']:9.1f}  [{low:.1f}, {high:.1f}]"
            )
    if out["pending"]:
        print(f"\npending: {len(out['pending'])} runs; continue with: {out['continue_with']}")


def markdown_table(out: dict) -> str:
    """The README's results table for one tier (from ``aggregate``'s output)."""
    rows = [
        "| env | method | seeds | final score mean ± std | IQM [95% CI] "
        "| area under curve IQM [95% CI] | last eval mean ± std |",
        "|---|---|---|---|---|---|---|",
    ]
    for env, methods in out["results"].items():
        for method, r in methods.items():
            low, high = r["iqm_ci95"]
            rows.append(
                f"| {env} | {method} | {len(r['seeds'])} | {r['mean']:.1f} ± {r['std']:.1f} "
                f"| {r['iqm']:.1f} [{low:.1f}, {high:.1f}] "
                f"| {_auc(r)} "
                f"| {r['last_eval_mean']:.1f} ± {r['last_eval_std']:.1f} |"
            )
    return "\n".join(rows)


#: The last-quarter diagnostics of the seed-by-seed table: ``(logged name, column, format)``.
#: ``alpha`` is SAC's temperature; ``beta`` the PID's weight where a run has one (runs made
#: before the temperature was named ``alpha`` logged it as ``beta``: each file's config says).
SEED_DIAGNOSTICS = (
    ("step_size", "step size", "{:.3g}"),
    ("critic_gain", "critic gain per state", "{:.3g}"),
    ("elbo_gap", "ELBO gain (nats)", "{:.3g}"),
    ("entropy_chain", "chain's part of the entropy (nats)", "{:.3g}"),
    ("entropy", "entropy", "{:.2f}"),
    ("alpha", "alpha", "{:.3f}"),
    ("beta", "beta", "{:.3f}"),
    ("policy_distance", "policy distance", "{:.3f}"),
    ("num_divergent", "divergent chains", "{:.1f}"),
)


def seed_tables(tier_name: str, columns: int = 10) -> str:
    """The tier's own finished runs seed by seed, per env: the evaluation curve (at most
    ``columns`` evaluations, evenly spaced, the last included), final score and wall time; then
    the last-quarter mean of each diagnostic in :data:`SEED_DIAGNOSTICS` any of them logged."""
    by_env: dict[str, list[tuple[str, dict]]] = {}
    for (env, method), runs in _own_results(tier_name).items():
        by_env.setdefault(env, []).extend((method, r) for r in sorted(runs, key=_seed))
    parts = []
    for env, runs in by_env.items():
        frames = sorted({h["frames"] for _, r in runs for h in r["eval_history"]})
        step = -(-len(frames) // columns)
        shown = frames[::-1][::step][::-1]
        head = [f"{f // 1000}k" if f % 1000 == 0 else str(f) for f in shown]
        rows = [
            f"### {env}",
            "",
            "| run | " + " | ".join(head) + " | final score | wall time |",
            "|---|" + "---|" * (len(shown) + 2),
        ]
        for method, r in runs:
            curve = " | ".join(_cell(_at(r["eval_history"], f), "{:.0f}") for f in shown)
            rows.append(
                f"| `{method}`, seed {r['seed']} | {curve} | {r['final_return']:.0f} "
                f"| {r['wall_time_s'] / 60:.0f} min |"
            )
        logged = [
            c for c in SEED_DIAGNOSTICS if any(c[0] in r.get("diagnostics", {}) for _, r in runs)
        ]
        if logged:
            rows += [
                "",
                "| run | " + " | ".join(name for _, name, _ in logged) + " |",
                "|---|" + "---|" * len(logged),
            ]
            for method, r in runs:
                diagnostics = r.get("diagnostics", {})
                cells = [
                    _cell(diagnostics[key]["last_quarter_mean"], fmt) if key in diagnostics else "-"
                    for key, _, fmt in logged
                ]
                rows.append(f"| `{method}`, seed {r['seed']} | " + " | ".join(cells) + " |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def _seed(summary: dict) -> int:
    return summary["seed"]


def _cell(value: float, fmt: str) -> str:
    return "-" if np.isnan(value) else fmt.format(value)


def _auc(row: dict) -> str:
    if "auc_iqm" not in row:  # tiers aggregated before the area was recorded
        return "-"
    low, high = row["auc_iqm_ci95"]
    return f"{row['auc_iqm']:.1f} [{low:.1f}, {high:.1f}]"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("action", choices=["run", "collect", "aggregate", "status", "seeds"])
    parser.add_argument("--tier", choices=sorted(TIERS), default="Q")
    parser.add_argument("--methods", nargs="*", help="subset of the tier's methods")
    parser.add_argument("--envs", nargs="*", help="subset of the tier's envs")
    parser.add_argument("--seeds", nargs="*", type=int, help="subset of the tier's seeds")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    args = parser.parse_args(argv)
    tier = TIERS[args.tier]
    for name, chosen, allowed in (
        ("--methods", args.methods, tier.methods),
        ("--envs", args.envs, tier.envs),
        ("--seeds", args.seeds, tier.seeds),
    ):
        unknown = set(chosen or ()) - set(allowed)
        if unknown:
            parser.error(f"{name} {sorted(unknown)} not in tier {args.tier}: {list(allowed)}")
    if args.action == "run":
        return run_grid(args)
    if args.action == "collect":
        logger.info("collected %d finished runs", collect_finished(args.tier))
        return 0
    if args.action == "status":
        for method, env, seed in _grid(args.tier, args.methods, args.envs, args.seeds):
            print(f"{_status(args.tier, method, env, seed):9s} {method:18s} {env:16s} seed {seed}")
        return 0
    if args.action == "seeds":
        print(seed_tables(args.tier))
        return 0
    out = aggregate(args.tier)
    print_table(out)
    print("\n" + markdown_table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
