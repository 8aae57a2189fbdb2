"""The training loop every recipe shares: :func:`train`.

A recipe supplies a :class:`~torchrl_mcmc.recipes.methods.base.Method` class (how to build the
actor and update it); :func:`train` runs the loop, and :class:`~torchrl_mcmc.recipes.run.Run`
everything around it, identically for every method: run directory, logging, collection,
replay, evaluation in deterministic mode, learning-curve PNG, ``summary.json``, atomic
checkpoints, resume and a clean stop on SIGINT / SIGTERM. Each ``examples/<recipe>.py`` writes
this same loop out (``tests/test_examples.py`` keeps them identical).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig
from torchrl.envs import EnvBase

from torchrl_mcmc.recipes.methods.base import Method
from torchrl_mcmc.recipes.run import Run


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
    with Run(cfg, method_cls) as run:
        method, buffer = run.method, run.buffer
        for batch in run.collect():
            # One batch of frames is one policy iteration; the buffer keeps what updates read.
            buffer.extend(batch.reshape(-1).select(*method.replay_keys, strict=False))
            # optim.utd_ratio updates per frame, once the random frames are in.
            num_updates = run.updates_due(batch)
            if num_updates:
                method.begin_iteration()
                metrics = [method.update(buffer.sample()) for _ in range(num_updates)]
                run.log_updates(metrics, method.end_iteration(metrics))
            run.collector.update_policy_weights_()
            # Evaluate and checkpoint when due, log, and stop here if a signal asked to.
            if run.evaluation_due():
                run.evaluate()
            run.log()
            if run.checkpoint_due():
                run.checkpoint()
            if run.stop_requested:
                break
    return run.exit_code
