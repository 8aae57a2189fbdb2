"""One training run's machinery, as pieces a loop calls top-down: :class:`Run`.

:func:`~torchrl_mcmc.recipes.trainer.train` and every ``examples/<recipe>.py`` write the same
loop with it: collect a batch, extend the replay buffer, update the method, evaluate when due,
log, checkpoint when due, stop on a signal. What is the same for every recipe and is not the
algorithm (the run directory and resume, seeds, logger, collector, the updates' bookkeeping and
their guard against non-finite values, evaluation, checkpoints, stop requests, the progress bar
and ``summary.json``) is here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
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
    atomic_write,
    checkpoint_path,
    latest_checkpoint,
    load_replay_state_dict,
    replay_state_dict,
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
    video_problem,
)
from torchrl_mcmc.recipes.exit_codes import ExitCode
from torchrl_mcmc.recipes.factories import (
    make_collector,
    make_env,
    make_replay_buffer,
    resolve_device,
    set_seeds,
    set_threads,
)
from torchrl_mcmc.recipes.logs import console_logs_above, end_file_logging, make_metrics_logger
from torchrl_mcmc.recipes.methods.base import Method
from torchrl_mcmc.recipes.provenance import provenance
from torchrl_mcmc.recipes.run_dir import OpenRun, open_run, release_run_dir
from torchrl_mcmc.recipes.signals import StopRequests

if TYPE_CHECKING:
    from types import TracebackType

    from tqdm import tqdm

__all__ = ["Progress", "Run", "RunWriteError"]

logger = logging.getLogger(__name__)


class RunWriteError(RuntimeError):
    """The file system refused a file a run must write (a checkpoint, ``summary.json``): a full
    disk, a read-only directory. Leaving :class:`Run` ends the run on it, with exit code
    :attr:`~torchrl_mcmc.recipes.exit_codes.ExitCode.FILESYSTEM`.

    Args:
        path: the file that could not be written.
        error: what the file system said.
    """

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"could not write {path} ({error})")
        self.path = path
        self.error = error


@dataclass
class Progress:
    """Where a run is; saved in every checkpoint, so that a resume goes on from there.

    A run stopped between the updates of a policy iteration is saved with the updates it has
    left (:attr:`pending_updates`) and what the iteration has measured so far; the resume runs
    those updates first, then ends the iteration as the loop would have.
    """

    frames: int = 0
    updates: int = 0
    next_eval: int = 0
    next_checkpoint: int = 0
    wall_time: float = 0.0
    eval_history: list = field(default_factory=list)
    #: Updates of the current policy iteration still to run: 0 between iterations.
    pending_updates: int = 0
    #: The scalars of the current iteration's updates so far (``Method.update``'s), for its
    #: ``Method.end_iteration`` and its log.
    iteration_metrics: list = field(default_factory=list)
    #: The current iteration's scalars for :meth:`Run.log` so far (``train/episode_return``).
    scalars: dict = field(default_factory=dict)
    #: Updates of the current iteration whose loss or gradients were not finite (skipped).
    nonfinite_updates: int = 0
    #: Non-finite updates in a row up to now; ``guard.max_nonfinite_updates`` stop the run.
    nonfinite_in_a_row: int = 0


class Run:
    """One training run, or the continuation of one (``cfg.resume``), as a context manager.

    Entering it opens the run (:func:`~torchrl_mcmc.recipes.run_dir.open_run`: every value
    checked, then a new run directory, or the resumed one with its checkpoint) and builds, in
    this order and seeded, the method, the replay buffer (a resume's restored with the method
    and the RNGs), the metrics logger, the collector of the frames left and the evaluation
    environment. Once the run directory exists, SIGINT and SIGTERM only ask the loop to stop
    (:attr:`stop_requested`): :meth:`update` stops between two updates, and one that comes during
    the setup stops the run before its first batch. Leaving it closes them; after a loop that ran
    out of frames, stopped on a signal or diverged it writes the final checkpoint (unless one of
    that state was just written or resumed from), and after a complete run ``summary.json`` (then
    ``episode.gif`` with ``eval.video``).

    A run that cannot start (a bad value or ``resume=``, or ``eval.video`` where nothing
    renders: the error is logged and :attr:`exit_code` is 2, nothing is created) or has nothing
    left to do collects nothing: :meth:`collect` yields no batch. A run stopped between the
    updates of an iteration resumes by finishing that iteration, before its first batch.

    Args:
        cfg: a recipe's configuration (``config/<recipe>.yaml`` composed by Hydra).
        method_cls: the method, built as ``method_cls(cfg, env, device)``.

    Examples:
        The loop of :func:`~torchrl_mcmc.recipes.trainer.train` and of the scripts::

            with Run(cfg, HMCSAC) as run:
                for batch in run.collect():
                    replay = batch.reshape(-1).select(*run.method.replay_keys, strict=False)
                    run.buffer.extend(replay)
                    if not run.update(run.updates_due(batch)):
                        break  # stopped between two updates
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
        if not callable(method_cls):
            raise TypeError(
                "method_cls must be a method class such as SAC or HMCSAC (the recipes' are in "
                f"torchrl_mcmc.recipes.METHODS), got {method_cls!r}"
            )
        self.cfg = cfg
        self._method_cls = method_cls
        #: How the run ended (:class:`~torchrl_mcmc.recipes.exit_codes.ExitCode`; 0 while it runs).
        self.exit_code: int = ExitCode.OK
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
        # The frames of the current batch, and the last evaluation return and beta (the bar
        # shows a value once there is one).
        self._batch_frames = 0
        self._last: dict[str, float] = {}
        # Set when guard.max_nonfinite_updates updates in a row were not finite; what the first
        # of them saw.
        self._diverged = False
        self._first_nonfinite = ""

    # ------------------------------------------------------------------ opening and closing
    def __enter__(self) -> Run:
        if self.cfg.eval.video and (problem := video_problem(self.cfg)) is not None:
            logger.error("%s", problem)  # at the start, not after hours of training
            self.exit_code = ExitCode.BAD_INPUT
            return self
        try:
            opened = open_run(self.cfg, self._method_cls)
        except ConfigError as err:
            logger.error("configuration error: %s", err)
            self.exit_code = ExitCode.BAD_INPUT
            return self
        except CheckpointError as err:
            logger.error("%s The run cannot continue; start a new one.", err)
            self.exit_code = ExitCode.BAD_INPUT
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
            end_file_logging()
            release_run_dir(self.path)
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
        if remaining <= 0 and not self.progress.pending_updates:
            logger.info("nothing left to do: %d frames already collected", self.progress.frames)
            return self
        if remaining > 0:  # none after a stop in the last iteration: only its updates are left
            # The collector counts from zero: it collects what is left, and a resume's
            # environments start a fresh episode seeded from the frame count.
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        try:
            return self._leave(exc_type, exc)
        finally:
            end_file_logging()  # the run's last lines are in its train.log; no later ones
            if self.path is not None:
                release_run_dir(self.path)

    def _leave(
        self, exc_type: type[BaseException] | None, exc: BaseException | None
    ) -> bool | None:
        """:meth:`__exit__`'s work: closing what the run built, the final checkpoint, the
        summary and the video."""
        self._stack.close()  # console lines as before, and the signals' own handlers
        if self._bar is None:  # nothing was built: bad input, or nothing left to do
            if self.method is not None and not (self.path / "summary.json").exists():
                # A complete run, resumed for the summary.json the file system refused.
                self._write_or_end(self._write_summary)
            return
        self._bar.close()
        if self.collector is not None:
            self.collector.shutdown()
        self._eval_env.close()
        if isinstance(exc, RunWriteError):
            self._end_on(exc)  # a checkpoint of the loop was refused: the run ends here
            return True
        if exc_type is not None:
            return  # the error goes on up; the last checkpoint is where a resume starts
        if self._checkpointed_at != self.progress.frames and not self._write_or_end(
            self.checkpoint  # the final state, unless the interval just wrote it
        ):
            return
        pending = self.progress.pending_updates
        left = f", {pending} updates of its last iteration left" if pending else ""
        if self._diverged:
            logger.error(
                "stopped at %d frames%s: the checkpoint holds the last finite state",
                self.progress.frames,
                left,
            )
            self.exit_code = ExitCode.DIVERGED
            return
        if self.stop_requested:
            logger.warning(
                "stopped at %d frames%s; continue with resume=%s",
                self.progress.frames,
                left,
                self.path,
            )
            self.exit_code = ExitCode.signalled(self._stop.signum)
            return
        if not self._write_or_end(self._write_summary):
            return
        if self.cfg.eval.video:  # after the summary: a failed video loses nothing else
            try:
                record_video(self.method.policy, self.cfg, self.path / "episode.gif")
            except Exception as err:
                logger.error("eval.video: no episode.gif (%s: %s)", type(err).__name__, err)

    def _write_or_end(self, write: Callable[[], object]) -> bool:
        """Calls ``write``; if the file system refuses it (:class:`RunWriteError`), ends the
        run (:meth:`_end_on`) and returns False."""
        try:
            write()
        except RunWriteError as err:
            self._end_on(err)
            return False
        return True

    def _end_on(self, err: RunWriteError) -> None:
        """Ends the run on a write the file system refused: logs what failed and the checkpoint
        a resume starts from, and sets :attr:`exit_code` to ``ExitCode.FILESYSTEM``."""
        last = latest_checkpoint(self.path)
        if last is None:
            then = "it has no checkpoint: free space or fix permissions, then start it again"
        else:
            then = (
                f"its last checkpoint, {last}, is intact: free space or fix permissions, then "
                f"continue with resume={self.path}"
            )
        logger.error("%s. The run stops at %d frames; %s.", err, self.progress.frames, then)
        self.exit_code = ExitCode.FILESYSTEM

    def _restore(self, state: dict[str, Any]) -> None:
        """Puts the method, replay buffer, RNGs and progress back as the checkpoint saved them."""
        self.method.load_state_dict(state["method"])
        if state["replay"] is not None:
            load_replay_state_dict(self.buffer, state["replay"])
        set_rng_state(state["rng"])
        self.progress = Progress(**state["progress"])
        self._checkpointed_at = self.progress.frames  # that checkpoint holds this state already
        logger.info("resumed at %d frames, %d updates", self.progress.frames, self.progress.updates)

    # ------------------------------------------------------------------ the loop's pieces
    def collect(self) -> Iterator[TensorDictBase]:
        """The collector's batches (one batch is one policy iteration), each counted in
        :attr:`progress` and the mean return of the episodes it finished noted for :meth:`log`.

        No batch when the run cannot start, has nothing left to do or was asked to stop during
        its setup (leaving it then checkpoints the start). A run resumed from a stop between the
        updates of an iteration first finishes it (:meth:`update`, then the loop's end of an
        iteration: the new weights to the collector, evaluation and checkpoint when due, the
        log), so that it goes on exactly as if it had not stopped.
        """
        if self._bar is None or self.stop_requested:
            return
        if self.progress.pending_updates and not self._finish_iteration():
            return
        if self.collector is None:
            return
        for batch in self.collector:
            self._batch_frames = batch.numel()
            self.progress.frames += self._batch_frames
            self.progress.scalars = {}
            done = batch["next", "done"]
            if done.any():
                episode_return = batch["next", "episode_reward"][done].mean().item()
                self.progress.scalars["train/episode_return"] = episode_return
            yield batch

    def updates_due(self, batch: TensorDictBase) -> int:
        """How many updates ``batch`` (the last collected) calls for: ``optim.utd_ratio`` per
        frame collected after the random ones (``collector.init_random_frames``), counted over
        the whole run, so that a fraction left by one batch is made up by the next: a ratio of
        0.5 with one frame per batch updates after every second batch, never after each one.
        The ratio is read as the decimal it is written as (``0.1`` is one tenth, exactly)."""
        ratio = Fraction(str(self.cfg.optim.utd_ratio))
        start = self.cfg.collector.init_random_frames
        after = max(0, self.progress.frames - start)
        before = max(0, self.progress.frames - batch.numel() - start)
        return math.floor(ratio * after) - math.floor(ratio * before)

    def update(self, num_updates: int) -> bool:
        """The policy iteration's ``num_updates`` updates of :attr:`method` on minibatches of
        :attr:`buffer`, between its ``begin_iteration`` and ``end_iteration``; their mean
        scalars, with the iteration's own, are noted for :meth:`log` (under ``train/``).

        A stop request is checked before each update: the updates left, and what the
        iteration measured so far, stay in :attr:`progress` (and so in the checkpoint written on
        leaving), and the resume runs them before it collects again. An update whose loss or
        gradients are not finite is skipped by the method and counted
        (``train/nonfinite_updates``); ``guard.max_nonfinite_updates`` of them in a row stop the
        run (:attr:`exit_code` 4) with its last finite state.

        Returns:
            Whether the iteration's updates are done; false when the run stopped between them,
            and the loop must stop at once.
        """
        if num_updates == 0:
            return True
        self.method.begin_iteration()
        self.progress.pending_updates = num_updates
        return self._run_pending_updates()

    def _run_pending_updates(self) -> bool:
        """Runs the updates left (:attr:`Progress.pending_updates`), then ends the iteration."""
        progress, method, guard = self.progress, self.method, self.cfg.guard
        while progress.pending_updates:
            if self.stop_requested:
                return False
            skipped = method.nonfinite_steps
            metrics = method.update(self.buffer.sample())
            progress.iteration_metrics.append(metrics)
            progress.pending_updates -= 1
            progress.updates += 1
            self._checkpointed_at = None  # the last checkpoint holds the state before this
            if method.nonfinite_steps == skipped:
                progress.nonfinite_in_a_row = 0
                continue
            progress.nonfinite_updates += 1
            progress.nonfinite_in_a_row += 1
            if progress.nonfinite_in_a_row == 1 or not self._first_nonfinite:
                self._first_nonfinite = self._nonfinite_in(metrics)
            if progress.nonfinite_in_a_row >= guard.max_nonfinite_updates:
                self._diverge(metrics)
                return False
        metrics = progress.iteration_metrics
        self._note_iteration(metrics, method.end_iteration(metrics))
        progress.iteration_metrics, progress.nonfinite_updates = [], 0
        return True

    def _note_iteration(self, metrics: list[dict[str, float]], iteration: dict[str, float]) -> None:
        """Notes for :meth:`log` the mean of each scalar of the iteration's updates (its finite
        values: a skipped update's are left out), the iteration's own and the non-finite count."""
        scalars = self.progress.scalars
        # Delayed updates (TD3) report some keys only on some steps: average what is there.
        for key in dict.fromkeys(k for m in metrics for k in m):
            values = [m[key] for m in metrics if key in m and math.isfinite(m[key])]
            if values:
                scalars[f"train/{key}"] = float(np.mean(values))
        for key, value in iteration.items():
            scalars[f"train/{key}"] = value
        scalars["train/nonfinite_updates"] = float(self.progress.nonfinite_updates)
        for key in ("alpha", "beta"):  # the temperature of the active prior, for the bar
            if f"train/{key}" in scalars:
                self._last[key] = scalars[f"train/{key}"]

    def _nonfinite_in(self, metrics: dict[str, float]) -> str:
        """What was not finite in the update that returned ``metrics``: its losses, and the
        step the method skipped."""
        losses = [
            f"{key} = {value:.3g}"
            for key, value in metrics.items()
            if key.startswith("loss") and not math.isfinite(value)
        ]
        shown = ", ".join(losses) if losses else "finite losses"
        return f"{shown}; {self.method.nonfinite_reason}"

    def _diverge(self, metrics: dict[str, float]) -> None:
        """Stops the run: ``guard.max_nonfinite_updates`` updates in a row were not finite."""
        cfg = self.cfg
        self._diverged = True
        rates = ", ".join(
            f"{key}={OmegaConf.select(cfg, key):g}"
            for key in ("optim.lr", "hmc.lr", "flow.lr")
            if OmegaConf.select(cfg, key) is not None
        )
        first, last = self._first_nonfinite, self._nonfinite_in(metrics)
        logger.error(
            "training diverged at %d frames: %d updates in a row were not finite, their steps "
            "skipped (%s). Likely causes: a learning rate too large (%s), or rewards or "
            "observations of a large scale. The parameters keep their last finite values; "
            "start a new run with a smaller learning rate (a resume keeps it).",
            self.progress.frames,
            self.progress.nonfinite_in_a_row,
            last if first == last else f"the first: {first}; the last: {last}",
            rates,
        )

    def _finish_iteration(self) -> bool:
        """The end of the iteration a stop interrupted: its updates left, then what the loop
        does after the updates (:meth:`collect`). False when the run stops again."""
        progress = self.progress
        logger.info(
            "finishing the iteration at %d frames: %d updates left",
            progress.frames,
            progress.pending_updates,
        )
        if not self._run_pending_updates():
            return False
        if self.collector is not None:
            self.collector.update_policy_weights_()
        if self.evaluation_due():
            self.evaluate()
        self.log()
        if self.checkpoint_due():
            self.checkpoint()
        return not self.stop_requested

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
        progress.scalars["eval/return"] = self._last["eval"] = value
        progress.next_eval += cfg.eval.interval_frames
        title = f"{cfg.method} on {cfg.env.name} (seed {cfg.seed})"
        curve = self.path / "learning_curve.png"
        try:
            plot_curve(progress.eval_history, curve, title)
        except OSError as err:  # a view of the evaluations, which the checkpoints keep
            logger.warning("could not write %s (%s); the run goes on without it", curve, err)
        logger.info("frames %d  eval return %.2f", progress.frames, value)
        return value

    def log(self) -> None:
        """Logs the batch's scalars and the frame rate at the frame count, and moves the bar."""
        progress = self.progress
        progress.wall_time = time.monotonic() - self._started
        progress.scalars["time/frames_per_s"] = progress.frames / max(progress.wall_time, 1e-9)
        if self.exp_logger is not None:
            try:
                for key, value in progress.scalars.items():
                    self.exp_logger.log_scalar(key, value, step=progress.frames)
            except OSError as err:  # a full disk: the run ends at its last checkpoint
                raise RunWriteError(Path(err.filename or self.path / "logs"), err) from err
        self._bar.update(self._batch_frames)
        formats = {"eval": ".1f", "alpha": ".3g", "beta": ".3g"}
        postfix = {k: format(self._last[k], f) for k, f in formats.items() if k in self._last}
        self._bar.set_postfix(postfix, refresh=False)

    def checkpoint_due(self) -> bool:
        """Every ``checkpoint.interval_frames`` frames, once the iteration's updates are done
        (a stop's checkpoint between them leaves the due one to the resume)."""
        progress = self.progress
        return not progress.pending_updates and progress.frames >= progress.next_checkpoint

    def checkpoint(self) -> Path:
        """Writes an atomic checkpoint of everything a resume needs; returns its path.

        The replay buffer (``checkpoint.save_replay_buffer``) goes in with its filled rows
        only (:func:`~torchrl_mcmc.recipes.checkpoint.replay_state_dict`). A write the file
        system refuses raises :class:`RunWriteError`, which ends the run as it leaves the
        ``with`` block; the previous checkpoint stays the one a resume starts from.
        """
        cfg, progress = self.cfg, self.progress
        if self.checkpoint_due():
            progress.next_checkpoint += cfg.checkpoint.interval_frames
        state = {
            "frames": progress.frames,
            "progress": vars(progress),
            "method": self.method.state_dict(),
            "replay": replay_state_dict(self.buffer) if cfg.checkpoint.save_replay_buffer else None,
            "rng": rng_state(),
            "logger": self.exp_logger.state_dict() if self.exp_logger is not None else None,
        }
        try:
            path = save_checkpoint(self.path, state, keep=cfg.checkpoint.keep)
        except OSError as err:
            raise RunWriteError(checkpoint_path(self.path, progress.frames), err) from err
        self._checkpointed_at = progress.frames
        logger.info("checkpoint %s", path.name)
        return path

    @property
    def stop_requested(self) -> bool:
        """Whether SIGINT or SIGTERM asked the run to stop (it then checkpoints on leaving and
        exits with 128 + the signal's number)."""
        return self._stop.signum is not None

    @property
    def summary(self) -> dict[str, Any] | None:
        """The run's ``summary.json``; ``None`` before it is complete (or with no directory)."""
        path = None if self.path is None else self.path / "summary.json"
        return json.loads(path.read_text()) if path is not None and path.exists() else None

    # ------------------------------------------------------------------ the end
    def _write_summary(self) -> None:
        """``summary.json``: the final return, the evaluations, the counts and the provenance,
        written atomically (raises :class:`RunWriteError` when the file system refuses it)."""
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
        path = self.path / "summary.json"
        try:
            atomic_write(path, lambda f: f.write(json.dumps(summary, indent=2).encode()))
        except OSError as err:
            raise RunWriteError(path, err) from err
        logger.info("final return %.2f after %d frames", summary["final_return"], progress.frames)
