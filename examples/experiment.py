"""The training loop every example script shares, and what makes a run trustworthy.

A script supplies a :class:`Method` (how to build the actor and update it), usually as a
:class:`LossMethod`, which holds what every method shares (loss, optimisers, target updates, PID,
checkpoint state); this module does the rest identically for every method: run directory,
logging, collection, replay, evaluation in deterministic mode, learning-curve PNG,
``summary.json``, atomic checkpoints and resume.
"""

from __future__ import annotations

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import LossModule, SoftUpdate
from torchrl.record.loggers import get_logger
from tqdm import tqdm

from examples.utils import (
    ConfigError,
    make_collector,
    make_env,
    make_replay_buffer,
    resolve_device,
    set_seeds,
    set_threads,
    validate_config,
)
from torchrl_mcmc import PIDController

logger = logging.getLogger("torchrl_mcmc.examples")

CHECKPOINT_POINTER = "latest_checkpoint.txt"
#: Config entries that must match for ``resume=`` to continue a run.
_RESUME_INVARIANTS = ("method", "env.name", "network", "seed")


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


def _remove_if_fresh(path: Path | None) -> None:
    """Removes a run directory this process created but never wrote a checkpoint into."""
    if path is None or not path.exists():
        return
    if (path / CHECKPOINT_POINTER).exists():
        return
    shutil.rmtree(path, ignore_errors=True)


def _check_resumable(cfg: DictConfig) -> tuple[Path, DictConfig]:
    run_dir = Path(cfg.resume).expanduser().resolve()
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        raise ConfigError(f"resume={cfg.resume!r}: no run there ({saved_path} is missing).")
    if not (run_dir / CHECKPOINT_POINTER).exists():
        raise ConfigError(f"resume={cfg.resume!r}: the run has no checkpoint yet.")
    saved = OmegaConf.load(saved_path)
    for key in _RESUME_INVARIANTS:
        old, new = (
            _unset_dropped(OmegaConf.select(saved, key)),
            _unset_dropped(OmegaConf.select(cfg, key)),
        )
        if old != new:
            raise ConfigError(f"resume={cfg.resume!r} is incompatible: {key} was {old}, now {new}.")
    # Continue with the saved configuration; only the frame budget may grow.
    saved.collector.total_frames = max(saved.collector.total_frames, cfg.collector.total_frames)
    saved.resume = str(run_dir)
    return run_dir, saved


def _unset_dropped(value: Any) -> Any:
    """A config section without its null entries: a key added later with a null default
    (e.g. ``network.policy_hidden``) leaves runs saved before it resumable."""
    if isinstance(value, DictConfig):
        return {k: v for k, v in OmegaConf.to_container(value).items() if v is not None}
    return value


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
    _atomic_write(run_dir / CHECKPOINT_POINTER, lambda f: f.write(path.name.encode()))
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


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    name = (run_dir / CHECKPOINT_POINTER).read_text().strip()
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)


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
    """Trains one run end to end; returns a process exit code (0 ok, 2 bad config, 128 + N
    stopped by signal N after writing a checkpoint)."""
    fresh_dir = _hydra_output_dir()
    try:
        validate_config(cfg)
        if cfg.resume:
            run_dir, cfg = _check_resumable(cfg)
            if fresh_dir is not None and fresh_dir != run_dir:
                _remove_if_fresh(fresh_dir)
        else:
            run_dir = fresh_dir or Path(cfg.run_root).resolve() / time.strftime("%Y%m%d-%H%M%S")
    except ConfigError as err:
        logger.error("configuration error: %s", err)
        _remove_if_fresh(fresh_dir)
        return 2
    run_dir.mkdir(parents=True, exist_ok=True)
    _setup_file_logging(run_dir)
    if not cfg.resume:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    logger.info("run directory: %s", run_dir)

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
    if cfg.resume:
        state = load_checkpoint(run_dir)
        method.load_state_dict(state["method"])
        if state.get("replay") is not None:
            buffer.load_state_dict(state["replay"])
        _set_rng_state(state["rng"])
        progress = _Progress(**state["progress"])
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
    last = {"eval": float("nan"), "beta": float("nan")}
    with _StopRequests() as stop:
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
                last["beta"] = scalars.get("train/beta", last["beta"])
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
            bar.set_postfix(eval=f"{last['eval']:.1f}", beta=f"{last['beta']:.3g}", refresh=False)
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
