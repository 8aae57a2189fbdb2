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

from torchrl_mcmc.recipes import SAC, Run, check_command_line


@hydra.main(config_path="pkg://torchrl_mcmc.recipes.config", config_name="sac", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # Opens the run directory (new, or resume=), then builds the method, replay buffer, logger
    # and collector; on leaving, writes the last checkpoint and summary.json.
    with Run(cfg, SAC) as run:
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
    if run.exit_code:  # only then: a Hydra multirun goes on to its next job
        sys.exit(run.exit_code)  # ExitCode: 2 bad input, 4 diverged, 128 + N signal N


if __name__ == "__main__":
    check_command_line("sac")  # unknown keys and options: exit 2, naming the nearest
    main()
