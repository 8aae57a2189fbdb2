"""One training run's machinery, as pieces a loop calls top-down: :class:`Run`.

:func:`~torchrl_mcmc.recipes.trainer.train` and every ``examples/<recipe>.py`` write the same
loop with it: collect a batch, extend the replay buffer, update the method, evaluate when due,
log, checkpoint when due, stop on a signal. What is the same for every recipe and is not the
algorithm (the run directory and resume, seeds, logger, collector, evaluation, checkpoints,
stop requests, the progress bar and ``summary.json``) is here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torchrl.collectors import Collector, MultiSyncCollector
from torchrl.data import TensorDictReplayBuffer
from torchrl.envs import EnvBase
from torchrl.record.loggers import Logger

from torchrl_mcmc.recipes.checkpoint import (
    CheckpointError,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from torchrl_mcmc.recipes.config_rules import ConfigError
from torchrl_mcmc.recipes.evaluation import (
    evaluate,
    make_eval_env,
    plot_curve,
    record_video,
)
from torchrl_mcmc.recipes.factories import (
    make_collector,
    make_env,
    make_replay_buffer,
    resolve_device,
    set_seeds,
    set_threads,
)
from torchrl_mcmc.recipes.logs import console_logs_above, make_metrics_logger
from torchrl_mcmc.recipes.methods.base import Method
from torchrl_mcmc.recipes.provenance import provenance
from torchrl_mcmc.recipes.run_dir import OpenRun, open_run
from torchrl_mcmc.recipes.signals import StopRequests

if TYPE_CHECKING:
    from pathlib import Path

    from tqdm import tqdm

__all__ = ["Progress", "Run"]

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run is; saved in every checkpoint, so that a resume goes on from there."""

    frames: int = 0
    updates: int = 0
    next_eval: int = 0
    next_checkpoint: int = 0
    wall_time: float = 0.0
    eval_history: list = field(default_factory=list)


class Run:
    """One training run, or the continuation of one (``cfg.resume``), as a context manager.

    Entering it opens the run (:func:`~torchrl_mcmc.recipes.run_dir.open_run`: every value
    checked, then a new run directory, or the resumed one with its checkpoint) and builds, in
    this order and seeded, the method, the replay buffer (a resume's restored with the method
    and the RNGs), the metrics logger, the collector of the frames left and the evaluation
    environment. Once the run directory exists, SIGINT and SIGTERM only ask the loop to stop
    (:attr:`stop_requested`); one that comes during the setup stops the run before its first
    batch. Leaving it closes them; after a loop that ran out of frames or stopped on a signal it
    writes the final checkpoint (unless one of that state was just written or resumed from), and
    after a complete run ``summary.json`` (and ``episode.gif`` with ``eval.video``).

    A run that cannot start (a bad value or ``resume=``: the error is logged and
    :attr:`exit_code` is 2, nothing is created) or has no frames left collects nothing:
    :meth:`collect` yields no batch.

    Args:
        cfg: a recipe's configuration (``config/<recipe>.yaml`` composed by Hydra).
        method_cls: the method, built as ``method_cls(cfg, env, device)``.

    Examples:
        The loop of :func:`~torchrl_mcmc.recipes.trainer.train` and of the scripts::

            with Run(cfg, HMCSAC) as run:
                method, buffer = run.method, run.buffer
                for batch in run.collect():
                    buffer.extend(batch.reshape(-1).select(*method.replay_keys, strict=False))
                    num_updates = run.updates_due(batch)
                    if num_updates:
                        method.begin_iteration()
                        metrics = [method.update(buffer.sample()) for _ in range(num_updates)]
                        run.log_updates(metrics, method.end_iteration(metrics))
                    run.collector.update_policy_weights_()
                    if run.evaluation_due():
                        run.evaluate()
                    run.log()
                    if run.checkpoint_due():
                        run.checkpoint()
                    if run.stop_requested:
                        break
            exit_code = run.exit_code
    """

    def __init__(
        self, cfg: DictConfig, method_cls: Callable[[DictConfig, EnvBase, torch.device], Method]
    ) -> None:
        self.cfg = cfg
        self._method_cls = method_cls
        #: 0 ok (or not finished yet); 2 bad input; 128 + N stopped by signal N.
        self.exit_code = 0
        #: The run directory (``config.yaml``, ``train.log``, ``checkpoints/``, ``logs/``...).
        self.path: Path | None = None
        self.method: Method | None = None
        self.buffer: TensorDictReplayBuffer | None = None
        #: ``None`` until entered, and for a run that collects nothing.
        self.collector: Collector | MultiSyncCollector | None = None
        self.progress = Progress()
        self.exp_logger: Logger | None = None
        self._eval_env: EnvBase | None = None
        self._bar: tqdm | None = None
        self._stop = StopRequests()
        self._stack = contextlib.ExitStack()
        self._started = 0.0
        self._checkpointed_at: int | None = None
        # The scalars of the current batch (logged by log()), and the last evaluation return
        # and beta (the bar shows a value once there is one).
        self._scalars: dict[str, float] = {}
        self._batch_frames = 0
        self._last: dict[str, float] = {}

    # ------------------------------------------------------------------ opening and closing
    def __enter__(self) -> Run:
        try:
            opened = open_run(self.cfg)
        except ConfigError as err:
            logger.error("configuration error: %s", err)
            self.exit_code = 2
            return self
        except CheckpointError as err:
            logger.error("%s", err)
            self.exit_code = 2
            return self
        self.cfg = opened.cfg
        self.path = opened.path
        # From here on the run directory exists: a signal during the setup (which takes tens of
        # seconds on a busy machine) asks for a stop too, instead of killing the run half-made.
        self._stack.enter_context(self._stop)
        try:
            return self._build(opened)
        except BaseException:
            self._stack.close()  # the `with` block never starts: put the handlers back here
            raise

    def _build(self, opened: OpenRun) -> Run:
        """Builds what the loop uses (:meth:`__enter__`, once the run directory is open)."""
        cfg = self.cfg
        set_threads(cfg.threads)
        set_seeds(cfg.seed)
        device = resolve_device(cfg.device)
        spec_env = make_env(cfg)
        self.method = self._method_cls(cfg, spec_env, device)
        spec_env.close()
        self.buffer = make_replay_buffer(cfg, device)
        self.progress = Progress(
            next_eval=cfg.eval.interval_frames, next_checkpoint=cfg.checkpoint.interval_frames
        )
        if opened.state is not None:
            self._restore(opened.state)
        self.exp_logger = make_metrics_logger(cfg, opened, self.progress.frames)

        remaining = cfg.collector.total_frames - self.progress.frames
        if remaining <= 0:
            logger.info("nothing left to do: %d frames already collected", self.progress.frames)
            return self
        # The collector counts from zero: it collects what is left, and a resume's environments
        # start a fresh episode seeded from the frame count.
        run_cfg = OmegaConf.merge(cfg, {"collector": {"total_frames": remaining}})
        run_cfg.collector.init_random_frames = max(
            0, cfg.collector.init_random_frames - self.progress.frames
        )
        self.collector = make_collector(
            run_cfg, self.method.policy, device, seed=cfg.seed + self.progress.frames
        )
        self._eval_env = make_eval_env(cfg)
        self._eval_env.set_seed(cfg.seed + 1_000_003)

        from tqdm import tqdm

        self._started = time.monotonic() - self.progress.wall_time
        self._bar = tqdm(
            total=cfg.collector.total_frames,
            initial=self.progress.frames,
            disable=not cfg.progress_bar,
            unit="frames",
            dynamic_ncols=True,
        )
        self._stack.enter_context(console_logs_above(self._bar))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stack.close()  # console lines as before, and the signals' own handlers
        if self.collector is None:
            return
        self._bar.close()
        self.collector.shutdown()
        self._eval_env.close()
        if exc_type is not None:
            return  # the error goes on up; the last checkpoint is where a resume starts
        if self._checkpointed_at != self.progress.frames:
            self.checkpoint()  # the final state, unless the interval just wrote it
        if self.stop_requested:
            logger.warning(
                "stopped at %d frames; continue with resume=%s", self.progress.frames, self.path
            )
            self.exit_code = 128 + self._stop.signum
            return
        if self.cfg.eval.video:
            record_video(self.method.policy, self.cfg, self.path / "episode.gif")
        self._write_summary()

    def _restore(self, state: dict[str, Any]) -> None:
        """Puts the method, replay buffer, RNGs and progress back as the checkpoint saved them."""
        self.method.load_state_dict(state["method"])
        if state["replay"] is not None:
            self.buffer.load_state_dict(state["replay"])
        set_rng_state(state["rng"])
        self.progress = Progress(**state["progress"])
        self._checkpointed_at = self.progress.frames  # that checkpoint holds this state already
        logger.info("resumed at %d frames, %d updates", self.progress.frames, self.progress.updates)

    # ------------------------------------------------------------------ the loop's pieces
    def collect(self) -> Iterator[TensorDictBase]:
        """The collector's batches (one batch is one policy iteration), each counted in
        :attr:`progress` and the mean return of the episodes it finished noted for :meth:`log`.
        No batch when the run cannot start, has no frames left or was asked to stop during its
        setup (leaving it then checkpoints the start)."""
        if self.collector is None or self.stop_requested:
            return
        for batch in self.collector:
            self._batch_frames = batch.numel()
            self.progress.frames += self._batch_frames
            self._scalars = {}
            done = batch["next", "done"]
            if done.any():
                episode_return = batch["next", "episode_reward"][done].mean().item()
                self._scalars["train/episode_return"] = episode_return
            yield batch

    def updates_due(self, batch: TensorDictBase) -> int:
        """How many updates ``batch`` calls for: none until the random frames are in
        (``collector.init_random_frames``), then ``optim.utd_ratio`` per frame, at least one."""
        if self.progress.frames <= self.cfg.collector.init_random_frames:
            return 0
        return max(1, round(batch.numel() * self.cfg.optim.utd_ratio))

    def log_updates(self, metrics: list[dict[str, float]], iteration: dict[str, float]) -> None:
        """Counts a batch's updates and notes their mean scalars, with the policy iteration's
        own (``Method.end_iteration``'s), for :meth:`log` (under ``train/``)."""
        self.progress.updates += len(metrics)
        # Delayed updates (TD3) report some keys only on some steps: average what is there.
        for key in dict.fromkeys(k for m in metrics for k in m):
            self._scalars[f"train/{key}"] = float(np.mean([m[key] for m in metrics if key in m]))
        for key, value in iteration.items():
            self._scalars[f"train/{key}"] = value
        if "train/beta" in self._scalars:
            self._last["beta"] = self._scalars["train/beta"]

    def evaluation_due(self) -> bool:
        """Every ``eval.interval_frames`` frames, and at the end."""
        frames = self.progress.frames
        return frames >= self.progress.next_eval or frames >= self.cfg.collector.total_frames

    def evaluate(self) -> float:
        """The mean return of ``eval.episodes`` deterministic episodes, noted in the history,
        the learning curve (``learning_curve.png``) and for :meth:`log`; returns it."""
        cfg, progress = self.cfg, self.progress
        value = evaluate(self.method.policy, self._eval_env, cfg.env.max_episode_steps)
        progress.eval_history.append({"frames": progress.frames, "eval_return": value})
        self._scalars["eval/return"] = self._last["eval"] = value
        progress.next_eval += cfg.eval.interval_frames
        title = f"{cfg.method} on {cfg.env.name} (seed {cfg.seed})"
        plot_curve(progress.eval_history, self.path / "learning_curve.png", title)
        logger.info("frames %d  eval return %.2f", progress.frames, value)
        return value

    def log(self) -> None:
        """Logs the batch's scalars and the frame rate at the frame count, and moves the bar."""
        progress = self.progress
        progress.wall_time = time.monotonic() - self._started
        self._scalars["time/frames_per_s"] = progress.frames / max(progress.wall_time, 1e-9)
        if self.exp_logger is not None:
            for key, value in self._scalars.items():
                self.exp_logger.log_scalar(key, value, step=progress.frames)
        self._bar.update(self._batch_frames)
        formats = {"eval": ".1f", "beta": ".3g"}
        postfix = {k: format(self._last[k], f) for k, f in formats.items() if k in self._last}
        self._bar.set_postfix(postfix, refresh=False)

    def checkpoint_due(self) -> bool:
        """Every ``checkpoint.interval_frames`` frames."""
        return self.progress.frames >= self.progress.next_checkpoint

    def checkpoint(self) -> Path:
        """Writes an atomic checkpoint of everything a resume needs; returns its path."""
        cfg, progress = self.cfg, self.progress
        if self.checkpoint_due():
            progress.next_checkpoint += cfg.checkpoint.interval_frames
        state = {
            "frames": progress.frames,
            "progress": vars(progress),
            "method": self.method.state_dict(),
            "replay": self.buffer.state_dict() if cfg.checkpoint.save_replay_buffer else None,
            "rng": rng_state(),
            "logger": self.exp_logger.state_dict() if self.exp_logger is not None else None,
        }
        path = save_checkpoint(self.path, state, keep=cfg.checkpoint.keep)
        self._checkpointed_at = progress.frames
        logger.info("checkpoint %s", path.name)
        return path

    @property
    def stop_requested(self) -> bool:
        """Whether SIGINT or SIGTERM asked the run to stop (it then checkpoints on leaving and
        exits with 128 + the signal's number)."""
        return self._stop.signum is not None

    # ------------------------------------------------------------------ the end
    def _write_summary(self) -> None:
        """``summary.json``: the final return, the evaluations, the counts and the provenance."""
        cfg, progress = self.cfg, self.progress
        last3 = [h["eval_return"] for h in progress.eval_history[-3:]]
        summary: dict[str, Any] = {
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
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2))
        logger.info("final return %.2f after %d frames", summary["final_return"], progress.frames)
