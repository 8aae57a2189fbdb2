"""The training loop every recipe shares.

A recipe supplies a :class:`~torchrl_mcmc.recipes.methods.base.Method` class (how to build the
actor and update it); :func:`train` does the rest identically for every method: run directory,
logging, collection, replay, evaluation in deterministic mode, learning-curve PNG,
``summary.json``, atomic checkpoints, resume and a clean stop on SIGINT / SIGTERM.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torchrl.data import TensorDictReplayBuffer
from torchrl.envs import EnvBase
from torchrl.record.loggers import Logger, get_logger
from torchrl.record.loggers.csv import CSVLogger

from torchrl_mcmc.recipes.checkpoint import (
    CheckpointError,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from torchrl_mcmc.recipes.config_rules import ConfigError
from torchrl_mcmc.recipes.evaluation import evaluate, plot_curve, record_video
from torchrl_mcmc.recipes.factories import (
    make_collector,
    make_env,
    make_replay_buffer,
    resolve_device,
    set_seeds,
    set_threads,
)
from torchrl_mcmc.recipes.logs import console_logs_above, drop_logged_rows_after
from torchrl_mcmc.recipes.methods.base import Method
from torchrl_mcmc.recipes.provenance import provenance
from torchrl_mcmc.recipes.run_dir import OpenRun, open_run
from torchrl_mcmc.recipes.signals import StopRequests

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


def train(
    cfg: DictConfig, method_cls: Callable[[DictConfig, EnvBase, torch.device], Method]
) -> int:
    """Trains one run end to end, or continues one (``cfg.resume``).

    Args:
        cfg: a recipe's configuration (``config/<recipe>.yaml`` composed by Hydra).
        method_cls: the method, built as ``method_cls(cfg, env, device)``.

    Returns:
        A process exit code: 0 ok; 2 bad input (a bad config value, or a ``resume=`` that
        cannot continue); 128 + N stopped by signal N after writing a checkpoint.
    """
    try:
        run = open_run(cfg)
    except ConfigError as err:
        logger.error("configuration error: %s", err)
        return 2
    except CheckpointError as err:
        logger.error("%s", err)
        return 2
    cfg, run_dir = run.cfg, run.path

    set_threads(cfg.threads)
    set_seeds(cfg.seed)
    device = resolve_device(cfg.device)
    spec_env = make_env(cfg)
    method = method_cls(cfg, spec_env, device)
    spec_env.close()
    buffer = make_replay_buffer(cfg, device)
    progress = Progress(
        next_eval=cfg.eval.interval_frames, next_checkpoint=cfg.checkpoint.interval_frames
    )
    if run.state is not None:
        progress = _restore(run, method, buffer)
    exp_logger = _make_logger(cfg, run, progress)

    remaining = cfg.collector.total_frames - progress.frames
    if remaining <= 0:
        logger.info("nothing left to do: %d frames already collected", progress.frames)
        return 0
    # The collector counts from zero: it collects what is left, and a resume's environments
    # start a fresh episode seeded from the frame count.
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
            "rng": rng_state(),
            "logger": exp_logger.state_dict() if exp_logger is not None else None,
        }
        path = save_checkpoint(run_dir, state, keep=cfg.checkpoint.keep)
        logger.info("checkpoint %s", path.name)

    from tqdm import tqdm

    started = time.monotonic() - progress.wall_time
    bar = tqdm(
        total=cfg.collector.total_frames,
        initial=progress.frames,
        disable=not cfg.progress_bar,
        unit="frames",
        dynamic_ncols=True,
    )
    last: dict[str, float] = {}  # the bar shows a value once there is one
    with StopRequests() as stop, console_logs_above(bar):
        for batch in collector:
            # Collect: one batch of frames is one policy iteration.
            frames = batch.numel()
            progress.frames += frames
            buffer.extend(batch.reshape(-1).select(*method.replay_keys, strict=False))
            scalars: dict[str, float] = {}
            done = batch["next", "done"]
            if done.any():
                scalars["train/episode_return"] = (
                    batch["next", "episode_reward"][done].mean().item()
                )

            # Update: utd_ratio updates per frame, once the random frames are in.
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

            # Evaluate: deterministic episodes every eval.interval_frames, and at the end.
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

            # Log, checkpoint, and stop here if a signal asked to.
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


def _restore(run: OpenRun, method: Method, buffer: TensorDictReplayBuffer) -> Progress:
    """Puts a resumed run's method, replay buffer and RNGs back as its checkpoint saved them;
    returns its progress."""
    state = run.state
    method.load_state_dict(state["method"])
    if state["replay"] is not None:
        buffer.load_state_dict(state["replay"])
    set_rng_state(state["rng"])
    progress = Progress(**state["progress"])
    logger.info("resumed at %d frames, %d updates", progress.frames, progress.updates)
    return progress


def _make_logger(cfg: DictConfig, run: OpenRun, progress: Progress) -> Logger | None:
    """The run's TorchRL logger under ``<run dir>/logs``; a resume's goes on from its saved
    state, unless the resume changed the logger settings (a new logger then)."""
    logger_state = None
    if run.resumed is not None and not any(k.startswith("logger.") for k in run.resumed.changed):
        logger_state = run.state["logger"]
    exp_logger = get_logger(
        cfg.logger.backend,
        logger_name=str(run.path / "logs"),
        experiment_name=cfg.logger.exp_name,
        state_dict=logger_state,
        **(
            {"wandb_kwargs": {"project": cfg.logger.project}}
            if cfg.logger.backend == "wandb"
            else {}
        ),
    )
    if run.state is not None and isinstance(exp_logger, CSVLogger):
        # The run logged past its checkpoint before it stopped; it logs those steps again now.
        drop_logged_rows_after(Path(exp_logger.experiment.log_dir) / "scalars", progress.frames)
    return exp_logger


def _bar_postfix(last: dict[str, float]) -> dict[str, str]:
    """The last evaluation return and beta, for those known so far."""
    formats = {"eval": ".1f", "beta": ".3g"}
    return {key: format(last[key], spec) for key, spec in formats.items() if key in last}


def _title(cfg: DictConfig) -> str:
    return f"{cfg.method} on {cfg.env.name} (seed {cfg.seed})"


def _write_summary(cfg: DictConfig, run_dir: Path, progress: Progress) -> None:
    """``summary.json``: the final return, the evaluations, the counts and the provenance."""
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
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("final return %.2f after %d frames", summary["final_return"], progress.frames)
