"""The training loop every example script shares, and what makes a run trustworthy.

A script supplies a :class:`Method` (how to build the actor and update it), usually as a
:class:`LossMethod`, which holds what every method shares (loss, optimisers, target updates, PID,
checkpoint state); this module does the rest identically for every method: run directory,
logging, collection, replay, evaluation in deterministic mode, learning-curve PNG,
``summary.json``, atomic checkpoints and resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import LossModule, SoftUpdate
from torchrl.record.loggers import get_logger
from torchrl.record.loggers.csv import CSVLogger
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from examples.config_rules import (
    ResumedConfig,
    leaves,
    requested_keys,
    resume_config,
    validate_config,
)
from examples.utils import (
    ConfigError,
    make_collector,
    make_env,
    make_replay_buffer,
    resolve_device,
    set_seeds,
    set_threads,
)
from torchrl_mcmc import PIDController

logger = logging.getLogger("torchrl_mcmc.examples")

CHECKPOINT_POINTER = "latest_checkpoint.txt"


class Method(Protocol):
    """What a script provides: the acting policy and one gradient update."""

    #: The policy the collector and the evaluation run (exploration by interaction type).
    policy: nn.Module
    #: Keys of a collected batch that the updates read (the replay buffer stores only these).
    replay_keys: list

    def begin_iteration(self) -> None:
        """Called once per collected batch, before its updates (e.g. refresh a prior)."""

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        """One full update (critic, actor, targets) on a sampled minibatch; returns scalars."""

    def end_iteration(self, metrics: list[dict[str, float]]) -> dict[str, float]:
        """Called after a batch's updates (e.g. a PID step); returns scalars to log."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class LossMethod:
    """What every script's :class:`Method` shares: a TorchRL loss, its optimisers and checkpoint.

    Each method is one loss module with a soft update of its target networks, trained by named
    optimisers; the HMC and Langevin methods add a PID controller of ``beta``, the TD3-style
    ones a counter of updates for the delayed policy step. A subclass builds its actor and loss,
    passes them and its optimisers to ``__init__``, and implements :meth:`update` with
    :meth:`_step`; saving and restoring all of that state is done here.

    The class attributes fix a script's checkpoint layout. The layouts differ between scripts
    only for historical reasons, and must stay as they are: runs in progress resume from
    checkpoints written with them (``tests/test_run_machinery.py`` pins the keys).
    """

    #: How :meth:`state_dict` stores :attr:`optimizers`: ``"named"``, one ``"optimizers"``
    #: dict by name; ``"ordered"``, one ``"optimizers"`` list in the order of
    #: :attr:`optimizers`; ``"flat"``, one top-level ``"optim_<name>"`` entry each.
    optimizer_layout: ClassVar[Literal["named", "ordered", "flat"]] = "named"
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
        self.pid: PIDController | None = None
        if self.pid_controlled and cfg.pid.enabled:
            self.pid = PIDController(**{k: v for k, v in cfg.pid.items() if k != "enabled"})
        if self.delayed_policy:
            self.policy_delay: int = cfg.td3.policy_delay
            self.steps = 0

    def begin_iteration(self) -> None:
        pass

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        raise NotImplementedError

    def end_iteration(self, metrics: list[dict[str, float]]) -> dict[str, float]:
        return {}

    def _step(self, loss: torch.Tensor, *names: str) -> None:
        """One gradient step on ``loss`` with the optimisers ``names`` (all of them if none)."""
        optimizers = [self.optimizers[n] for n in names] if names else self.optimizers.values()
        for optim in optimizers:
            optim.zero_grad(set_to_none=True)
        loss.backward()
        for optim in optimizers:
            optim.step()

    def _policy_turn(self) -> bool:
        """Counts one update; true for those that also move the actor and targets (TD3)."""
        self.steps += 1
        return self.steps % self.policy_delay == 0

    def _update_beta(self, metrics: list[dict[str, float]]) -> dict[str, float] | None:
        """One PID step on the iteration's mean policy distance, and ``beta`` set from it.

        ``None`` when there is no controller, or no update measured a distance (with delayed
        updates an iteration may have no actor update).
        """
        distances = [m["policy_distance"] for m in metrics if "policy_distance" in m]
        if self.pid is None or not distances:
            return None
        distance = sum(distances) / len(distances)
        self.loss.beta = self.pid.update(distance)
        return {"pid_distance": distance, "beta": self.pid.beta}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"loss": self.loss.state_dict()}
        optimizers = {name: optim.state_dict() for name, optim in self.optimizers.items()}
        if self.optimizer_layout == "named":
            state["optimizers"] = optimizers
        elif self.optimizer_layout == "ordered":
            state["optimizers"] = list(optimizers.values())
        else:
            state.update({f"optim_{name}": saved for name, saved in optimizers.items()})
        if self.pid_controlled:
            state["pid"] = self.pid.state_dict() if self.pid is not None else None
        if self.delayed_policy:
            state["steps"] = self.steps
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"])
        if self.optimizer_layout == "named":
            saved = state["optimizers"]
        elif self.optimizer_layout == "ordered":
            saved = dict(zip(self.optimizers, state["optimizers"], strict=True))
        else:
            saved = {name: state[f"optim_{name}"] for name in self.optimizers}
        for name, optim in self.optimizers.items():
            optim.load_state_dict(saved[name])
        if self.pid is not None:
            self.pid.load_state_dict(state["pid"])
        if self.delayed_policy:
            self.steps = state["steps"]


def adam_for_actor_and_critics(loss: LossModule, lr: float) -> dict[str, torch.optim.Optimizer]:
    """Adam on the actor and on the critics of a TorchRL actor-critic loss (SAC, TD3)."""
    return {
        "actor": torch.optim.Adam(loss.actor_network_params.values(True, True), lr=lr),
        "critic": torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=lr),
    }


# ---------------------------------------------------------------------------- run directory
def _hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return None


def _hydra_config() -> DictConfig | None:
    """The running Hydra job's own configuration (``hydra.*``), if any."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _remove_if_fresh(path: Path | None) -> None:
    """Removes a run directory this process created but never wrote a checkpoint into."""
    if path is None or not path.exists():
        return
    if (path / CHECKPOINT_POINTER).exists():
        return
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class RunPlan:
    """A checked configuration: what :func:`plan_run` returns."""

    #: The configuration the run uses (for a resume: the run's own, see :func:`resume_config`).
    cfg: DictConfig
    #: The run directory to continue (``resume=``); ``None`` for a new run.
    resume_dir: Path | None = None
    #: For a resume: what changed from the run's saved configuration, and what was filled in.
    resumed: ResumedConfig | None = None


def plan_run(cfg: DictConfig, hydra_cfg: DictConfig | None = None) -> RunPlan:
    """Everything about a run that the user's input decides, checked before anything exists.

    Every value of ``cfg`` (:func:`~examples.config_rules.validate_config`), and for
    ``resume=<run dir>`` the run itself: its directory, its checkpoint, and the configuration
    it continues with, its own ``config.yaml`` changed only where the command line may change
    it (:func:`~examples.config_rules.resume_config`). Raises :class:`ConfigError`.

    Args:
        cfg: the configuration as composed (without Hydra's own ``hydra`` node).
        hydra_cfg: Hydra's ``hydra`` node, which tells what the command line set and the
            script's configuration name. Without it (a direct call), every key of ``cfg`` counts
            as set, and ``cfg`` fills in what the run's configuration lacks.
    """
    validate_config(cfg)
    if not cfg.resume:
        return RunPlan(cfg)
    run_dir = Path(cfg.resume).expanduser().resolve()
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        raise ConfigError(f"resume={cfg.resume!r}: no run there ({saved_path} is missing).")
    if not (run_dir / CHECKPOINT_POINTER).exists():
        raise ConfigError(f"resume={cfg.resume!r}: the run has no checkpoint yet.")
    if hydra_cfg is not None:
        from hydra import compose

        defaults = compose(hydra_cfg.job.config_name)
        keys = requested_keys(cfg, hydra_cfg, defaults)
    else:
        defaults, keys = cfg, set(leaves(cfg))
    try:
        resumed = resume_config(OmegaConf.load(saved_path), cfg, defaults, keys)
        validate_config(resumed.cfg)
    except ConfigError as err:
        raise ConfigError(f"resume={cfg.resume!r}: {err}") from None
    resumed.cfg.resume = str(run_dir)
    return RunPlan(resumed.cfg, run_dir, resumed)


class Preflight(Callback):
    """Checks a run's configuration before Hydra creates its run directory (``common.yaml``
    registers it under ``hydra.callbacks``).

    Hydra creates the output directory, parents and all, before the script runs, and which of
    those folders were there before is unknowable afterwards; so :func:`plan_run` runs here
    first, and a bad configuration exits with status 2 leaving nothing on disk. A resume is
    pointed at its own run directory, so no new one is made for it either. (Multirun jobs skip
    this; :func:`run` checks them and removes the job's directory.)
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        task_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            plan = plan_run(task_cfg, config.hydra)
        except ConfigError as err:
            logger.error("configuration error: %s", err)
            sys.exit(2)
        if plan.resume_dir is not None:
            with read_write(config.hydra.run), open_dict(config.hydra.run):
                config.hydra.run.dir = str(plan.resume_dir)


def _record_resume(run_dir: Path, resumed: ResumedConfig) -> None:
    """Logs what a resume changed in the run's configuration, and writes the result to its
    ``config.yaml``, so that the next plain ``resume=<run dir>`` continues with it (a larger
    budget, say)."""
    for key, default in resumed.filled.items():
        logger.info("resume: config.yaml has no %s; the script's default %r applies", key, default)
    for key, (old, new) in resumed.changed.items():
        logger.info("resume: %s %r -> %r", key, old, new)
    if resumed.filled or resumed.changed:
        saved = OmegaConf.merge(resumed.cfg, {"resume": None})
        _atomic_write(run_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(saved).encode()))


def _setup_file_logging(run_dir: Path) -> None:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # The library's and the examples' loggers both live under "torchrl_mcmc".
    package_logger = logging.getLogger("torchrl_mcmc")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)


def provenance(
    command: list[str] | None = None, device: torch.device | str | None = None
) -> dict[str, Any]:
    """What every result records (docs/benchmarks.md): the command, git commit (and whether
    the tree was dirty), date, package versions, device, CPU model and thread count.

    The one provenance helper of the training runs' ``summary.json`` and of every benchmark.

    Args:
        command: the command that made the result (default: this process's ``sys.argv``).
        device: the device it ran on (default: CPU).
    """
    import gymnasium
    import mujoco
    import tensordict
    import torchrl

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
            return out.stdout.strip()
        except OSError:
            return ""

    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        models = (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        cpu = next(models, cpu)
    return {
        "command": shlex.join(sys.argv if command is None else command),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchrl": torchrl.__version__,
            "tensordict": tensordict.__version__,
            "gymnasium": gymnasium.__version__,
            "mujoco": mujoco.__version__,
        },
        "device": str(torch.device("cpu") if device is None else torch.device(device)),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(state["python"])


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int = 2) -> Path:
    """Writes ``state`` atomically: temp file, fsync, rename, then the pointer, same way.

    A reader (or a resume after ``kill -9``) sees either the previous checkpoint or the new
    one, never a half-written file.
    """
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    path = ckpt_dir / f"frames_{state['frames']:012d}.pt"
    _atomic_write(path, lambda f: torch.save(state, f))
    _point_to(run_dir, path)
    for old in sorted(ckpt_dir.glob("frames_*.pt"))[:-keep]:
        old.unlink()
    return path


def _atomic_write(path: Path, write: Callable) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be read."""


#: Suffix given to a checkpoint file found unreadable, so that rotation never keeps it in place
#: of an intact one (and it stays there to be looked at).
UNREADABLE_SUFFIX = ".unreadable"


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The newest intact checkpoint of ``run_dir`` (``torch.load(weights_only=True)``).

    The pointer names the newest; if that file cannot be read (a truncated copy, a damaged
    disk: ``torch.load`` fails), a warning names it and the other checkpoints are tried, newest
    first (``checkpoint.keep`` > 1 keeps older ones for this). Each unreadable file is renamed with
    :data:`UNREADABLE_SUFFIX` and the pointer set to the one loaded. Raises
    :class:`CheckpointError` naming every file tried when none can be read.
    """
    ckpt_dir = run_dir / "checkpoints"
    newest = ckpt_dir / (run_dir / CHECKPOINT_POINTER).read_text().strip()
    others = sorted((p for p in ckpt_dir.glob("frames_*.pt") if p != newest), reverse=True)
    candidates, failures = [newest, *others], []
    for index, path in enumerate(candidates):
        try:
            state = torch.load(path, weights_only=True)
        # A damaged file fails in many ways (a truncated zip: RuntimeError; an empty file:
        # EOFError; other bytes: UnpicklingError, KeyError...): any failure to read it is one.
        except Exception as err:
            reason = f"{type(err).__name__}: {err}".strip(": ")
            failures.append(f"{path.name} ({reason})")
            logger.warning("checkpoint %s is unreadable (%s); trying the next newest", path, reason)
            continue
        if failures:
            for unreadable in candidates[:index]:
                if unreadable.exists():
                    unreadable.rename(unreadable.with_name(unreadable.name + UNREADABLE_SUFFIX))
            _point_to(run_dir, path)
            logger.warning("resuming from the older checkpoint %s", path)
        return state
    raise CheckpointError(
        f"no checkpoint of {run_dir} can be read: {'; '.join(failures)}. The run cannot "
        "continue; start a new one."
    )


def _point_to(run_dir: Path, checkpoint: Path) -> None:
    """Names ``checkpoint`` in the run's pointer file, atomically."""
    _atomic_write(run_dir / CHECKPOINT_POINTER, lambda f: f.write(checkpoint.name.encode()))


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(policy: nn.Module, env, episodes: int, max_steps: int) -> float:
    """Mean return of ``episodes`` deterministic-mode episodes."""
    returns = []
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(episodes):
            rollout = env.rollout(max_steps, policy, break_when_any_done=True)
            returns.append(rollout["next", "reward"].sum().item())
    return float(np.mean(returns))


def record_video(policy: nn.Module, cfg: DictConfig, path: Path) -> None:
    """One deterministic episode rendered to a GIF (needs ``MUJOCO_GL=egl`` for MuJoCo)."""
    import imageio.v2 as imageio

    env = make_env(cfg, from_pixels=True)
    frames = []
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.reset()
        for _ in range(cfg.env.max_episode_steps):
            td = env.step(policy(td))
            frames.append(env.base_env._env.render())
            if td["next", "done"].any():
                break
            td = td["next"]
    env.close()
    imageio.mimsave(path, frames, duration=1 / 30)


def plot_curve(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["frames"] for h in history], [h["eval_return"] for h in history], marker="o")
    ax.set_xlabel("environment frames")
    ax.set_ylabel("evaluation return (deterministic)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- the loop
class _StopRequests:
    """SIGINT / SIGTERM ask the loop to stop at the end of the current iteration.

    The loop then writes a checkpoint and exits (status 128 + signal number), so an interrupted
    run (Ctrl-C, a scheduler's SIGTERM) loses nothing and resumes with ``resume=<run dir>``. A
    second signal falls through to Python's default handling, so a stuck run can still be
    killed. Handlers exist only in the main thread; elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum: int, frame: Any) -> None:
        self.signum = signum
        logger.warning(
            "%s received: stopping after this iteration (again to stop now)",
            signal.Signals(signum).name,
        )
        for previous_signum, handler in self._previous.items():
            signal.signal(previous_signum, handler)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@dataclass
class _Progress:
    frames: int = 0
    updates: int = 0
    next_eval: int = 0
    next_checkpoint: int = 0
    wall_time: float = 0.0
    eval_history: list = field(default_factory=list)


def run(cfg: DictConfig, build_method: Callable[[DictConfig, Any, torch.device], Method]) -> int:
    """Trains one run end to end; returns a process exit code (0 ok, 2 bad input: a bad config
    value, or a ``resume=`` that cannot continue; 128 + N stopped by signal N after writing a
    checkpoint)."""
    fresh_dir = _hydra_output_dir()
    try:
        plan = plan_run(cfg, _hydra_config())
    except ConfigError as err:
        logger.error("configuration error: %s", err)
        _remove_if_fresh(fresh_dir)
        return 2
    cfg = plan.cfg
    if plan.resume_dir is not None:
        run_dir = plan.resume_dir
        if fresh_dir is not None and fresh_dir != run_dir:
            _remove_if_fresh(fresh_dir)  # a multirun job's (Preflight redirects a single run's)
    else:
        run_dir = fresh_dir or Path(cfg.run_root).resolve() / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    _setup_file_logging(run_dir)
    logger.info("run directory: %s", run_dir)
    state = None
    if plan.resumed is None:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    else:
        try:
            state = load_checkpoint(run_dir)
        except CheckpointError as err:
            logger.error("%s", err)
            return 2
        _record_resume(run_dir, plan.resumed)

    set_threads(cfg.threads)
    set_seeds(cfg.seed)
    device = resolve_device(cfg.device)
    spec_env = make_env(cfg)
    method = build_method(cfg, spec_env, device)
    spec_env.close()
    buffer = make_replay_buffer(cfg, device)
    progress = _Progress(
        next_eval=cfg.eval.interval_frames, next_checkpoint=cfg.checkpoint.interval_frames
    )
    logger_state = None
    if state is not None:
        method.load_state_dict(state["method"])
        if state.get("replay") is not None:
            buffer.load_state_dict(state["replay"])
        _set_rng_state(state["rng"])
        progress = _Progress(**state["progress"])
        # New logger settings start a new logger; the saved state belongs to the old one.
        if not any(key.startswith("logger.") for key in plan.resumed.changed):
            logger_state = state.get("logger")
        logger.info("resumed at %d frames, %d updates", progress.frames, progress.updates)
    exp_logger = get_logger(
        cfg.logger.backend,
        logger_name=str(run_dir / "logs"),
        experiment_name=cfg.logger.exp_name,
        state_dict=logger_state,
        **(
            {"wandb_kwargs": {"project": cfg.logger.project}}
            if cfg.logger.backend == "wandb"
            else {}
        ),
    )
    if state is not None and isinstance(exp_logger, CSVLogger):
        # The run logged past its checkpoint before it stopped; it logs those steps again now.
        _drop_logged_rows_after(Path(exp_logger.experiment.log_dir) / "scalars", progress.frames)

    remaining = cfg.collector.total_frames - progress.frames
    if remaining <= 0:
        logger.info("nothing left to do: %d frames already collected", progress.frames)
        return 0
    run_cfg = OmegaConf.merge(cfg, {"collector": {"total_frames": remaining}})
    run_cfg.collector.init_random_frames = max(
        0, cfg.collector.init_random_frames - progress.frames
    )
    collector = make_collector(run_cfg, method.policy, device, seed=cfg.seed + progress.frames)
    eval_env = make_env(cfg)
    eval_env.set_seed(cfg.seed + 1_000_003)

    def checkpoint() -> None:
        state = {
            "frames": progress.frames,
            "progress": vars(progress),
            "method": method.state_dict(),
            "replay": buffer.state_dict() if cfg.checkpoint.save_replay_buffer else None,
            "rng": _rng_state(),
            "logger": exp_logger.state_dict() if exp_logger is not None else None,
        }
        path = save_checkpoint(run_dir, state, keep=cfg.checkpoint.keep)
        logger.info("checkpoint %s", path.name)

    started = time.monotonic() - progress.wall_time
    bar = tqdm(
        total=cfg.collector.total_frames,
        initial=progress.frames,
        disable=not cfg.progress_bar,
        unit="frames",
        dynamic_ncols=True,
    )
    last: dict[str, float] = {}  # the bar shows a value once there is one
    with _StopRequests() as stop, _console_logs_above(bar):
        for batch in collector:
            frames = batch.numel()
            progress.frames += frames
            buffer.extend(batch.reshape(-1).select(*method.replay_keys, strict=False))
            scalars: dict[str, float] = {}
            done = batch["next", "done"]
            if done.any():
                scalars["train/episode_return"] = (
                    batch["next", "episode_reward"][done].mean().item()
                )
            if progress.frames > cfg.collector.init_random_frames:
                method.begin_iteration()
                metrics = []
                for _ in range(max(1, round(frames * cfg.optim.utd_ratio))):
                    metrics.append(method.update(buffer.sample()))
                progress.updates += len(metrics)
                # Delayed updates (TD3) report some keys only on some steps: average what is there.
                for key in dict.fromkeys(k for m in metrics for k in m):
                    scalars[f"train/{key}"] = float(np.mean([m[key] for m in metrics if key in m]))
                for key, value in method.end_iteration(metrics).items():
                    scalars[f"train/{key}"] = value
                if "train/beta" in scalars:
                    last["beta"] = scalars["train/beta"]
            collector.update_policy_weights_()

            if (
                progress.frames >= progress.next_eval
                or progress.frames >= cfg.collector.total_frames
            ):
                value = evaluate(
                    method.policy, eval_env, cfg.eval.episodes, cfg.env.max_episode_steps
                )
                progress.eval_history.append({"frames": progress.frames, "eval_return": value})
                scalars["eval/return"] = last["eval"] = value
                progress.next_eval += cfg.eval.interval_frames
                plot_curve(progress.eval_history, run_dir / "learning_curve.png", _title(cfg))
                logger.info("frames %d  eval return %.2f", progress.frames, value)
            progress.wall_time = time.monotonic() - started
            scalars["time/frames_per_s"] = progress.frames / max(progress.wall_time, 1e-9)
            if exp_logger is not None:
                for key, value in scalars.items():
                    exp_logger.log_scalar(key, value, step=progress.frames)
            bar.update(frames)
            bar.set_postfix(_bar_postfix(last), refresh=False)
            if progress.frames >= progress.next_checkpoint:
                progress.next_checkpoint += cfg.checkpoint.interval_frames
                checkpoint()
            if stop.signum is not None:
                break
    bar.close()
    collector.shutdown()
    eval_env.close()
    if progress.next_checkpoint - cfg.checkpoint.interval_frames != progress.frames:
        checkpoint()  # the final state, unless the interval just wrote it
    if stop.signum is not None:
        logger.warning("stopped at %d frames; continue with resume=%s", progress.frames, run_dir)
        return 128 + stop.signum
    if cfg.eval.video:
        record_video(method.policy, cfg, run_dir / "episode.gif")
    _write_summary(cfg, run_dir, progress)
    return 0


def _drop_logged_rows_after(scalars_dir: Path, step: int) -> None:
    """Removes from a CSV logger's scalar files (``<name>.csv``, rows ``step,value``) every row
    past ``step``, the checkpoint a run resumes from, and a last row cut short by a kill; each
    file is rewritten atomically. The resumed run logs those steps again: without this they
    would appear twice."""
    for path in sorted(scalars_dir.rglob("*.csv")):
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.endswith("\n") and not _logged_after(line, step)]
        if len(kept) < len(lines):
            _atomic_write(path, lambda f, rows=kept: f.write("".join(rows).encode()))
            logger.info(
                "resume: %s: dropped %d rows logged after frame %d",
                path.relative_to(scalars_dir),
                len(lines) - len(kept),
                step,
            )


def _logged_after(line: str, step: int) -> bool:
    try:
        return int(line.split(",", 1)[0]) > step
    except ValueError:
        return False  # not a row the logger wrote: left alone


@contextlib.contextmanager
def _console_logs_above(bar: tqdm) -> Iterator[None]:
    """While ``bar`` shows, console log lines (ours through the root logger, and TorchRL's own
    coloured handler, which does not propagate) are written above it with ``tqdm.write``
    instead of into its line. Loggers without a console handler are left as they are."""
    if bar.disable:
        yield
        return
    loggers = [
        log
        for log in (logging.getLogger(), logging.getLogger("torchrl"))
        if any(
            isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
            for h in log.handlers
        )
    ]
    with logging_redirect_tqdm(loggers=loggers, tqdm_class=type(bar)):
        yield


def _bar_postfix(last: dict[str, float]) -> dict[str, str]:
    """The last evaluation return and beta, for those known so far."""
    formats = {"eval": ".1f", "beta": ".3g"}
    return {key: format(last[key], spec) for key, spec in formats.items() if key in last}


def _title(cfg: DictConfig) -> str:
    return f"{cfg.method} on {cfg.env.name} (seed {cfg.seed})"


def _write_summary(cfg: DictConfig, run_dir: Path, progress: _Progress) -> None:
    last3 = [h["eval_return"] for h in progress.eval_history[-3:]]
    summary = {
        "method": cfg.method,
        "env": cfg.env.name,
        "seed": cfg.seed,
        "final_return": float(np.mean(last3)) if last3 else math.nan,
        "final_return_definition": "mean of the last 3 deterministic evaluations",
        "eval_history": progress.eval_history,
        "frames": progress.frames,
        "updates": progress.updates,
        "wall_time_s": round(progress.wall_time, 1),
        **provenance(device=resolve_device(cfg.device)),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("final return %.2f after %d frames", summary["final_return"], progress.frames)
