"""The baseline: TorchRL's own ``SACLoss`` with the networks, data and budget of ``hmc_sac.py``.

    python examples/sac.py env=Ant-v4
    python examples/sac.py preset=quick

The method is :class:`torchrl_mcmc.recipes.SAC`; the loop below is
:func:`torchrl_mcmc.recipes.train`'s, the same in every script, and
:class:`torchrl_mcmc.recipes.Run` does what is around it (run directory, resume, logger,
collector, evaluation, checkpoints, stop on SIGTERM). Configuration:
``torchrl_mcmc/recipes/config/sac.yaml``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from torchrl_mcmc.recipes import SAC, Run


@hydra.main(config_path="pkg://torchrl_mcmc.recipes.config", config_name="sac", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # Opens the run directory (new, or resume=), then builds the method, replay buffer, logger
    # and collector; on leaving, writes the last checkpoint and summary.json.
    with Run(cfg, SAC) as run:
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
    if run.exit_code:
        sys.exit(run.exit_code)  # 2: bad input; 128 + N: stopped by signal N (resume=<run dir>)


if __name__ == "__main__":
    main()
