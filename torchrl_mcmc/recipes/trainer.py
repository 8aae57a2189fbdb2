"""The training loop every recipe shares: :func:`train`.

A recipe supplies a :class:`~torchrl_mcmc.recipes.methods.base.Method` class (how to build the
actor and update it); :func:`train` runs the loop, and :class:`~torchrl_mcmc.recipes.run.Run`
everything around it, identically for every method: run directory, logging, collection,
replay, the updates (skipped where not finite), evaluation in deterministic mode, learning-curve
PNG, ``summary.json``, atomic checkpoints, resume and a stop within an update on SIGINT /
SIGTERM. Each ``examples/<recipe>.py`` writes this same loop out (``tests/test_examples.py``
keeps them identical).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

import torch
from omegaconf import DictConfig
from torchrl.envs import EnvBase

from torchrl_mcmc.recipes.methods.base import Method
from torchrl_mcmc.recipes.run import Run

__all__ = ["train"]


@contextlib.contextmanager
def _console_logging() -> Iterator[None]:
    """The package's log records (INFO and above) on stdout while :func:`train` runs, when
    nothing has configured logging (no handler on the root logger: not a Hydra app); in the
    format of Hydra's, so that a run from Python prints what the scripts print."""
    root, package = logging.getLogger(), logging.getLogger("torchrl_mcmc")
    if root.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    level = package.level
    # On the root logger, where the progress bar finds console handlers to write above it.
    root.addHandler(handler)
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        package.setLevel(level)


@_console_logging()
def train(
    cfg: DictConfig, method_cls: Callable[[DictConfig, EnvBase, torch.device], Method]
) -> Run:
    """Trains one run end to end, or continues one (``cfg.resume``).

    Called from Python (outside the scripts, whose Hydra app sets up logging), the run's log
    lines go to the console too, as the scripts print them.

    Args:
        cfg: a recipe's configuration (``config/<recipe>.yaml`` composed by Hydra).
        method_cls: the method, built as ``method_cls(cfg, env, device)``.

    Returns:
        The run, closed: its directory (:attr:`~Run.path`), :attr:`~Run.summary` (``None``
        unless it completed), trained :attr:`~Run.method` and :attr:`~Run.exit_code`
        (:class:`~torchrl_mcmc.recipes.exit_codes.ExitCode`: 0 ok; 2 bad input; 3 a write the
        file system refused; 4 diverged; 128 + N stopped by signal N), each stop after writing
        a checkpoint.
    """
    with Run(cfg, method_cls) as run:
        for batch in run.collect():
            # One batch of frames is one policy iteration; the buffer keeps what updates read.
            run.buffer.extend(batch.reshape(-1).select(*run.method.replay_keys, strict=False))
            # optim.utd_ratio updates per frame once the random frames are in; a stop request
            # between two of them (or a diverged training) stops the run at once.
            if not run.update(run.updates_due(batch)):
                break
            run.collector.update_policy_weights_()
            # Evaluate and checkpoint when due, log, and stop here if a signal asked to.
            if run.evaluation_due():
                run.evaluate()
            run.log()
            if run.checkpoint_due():
                run.checkpoint()
            if run.stop_requested:
                break
    return run
