"""Best-of-N SAC: the control of HMC-SAC. N = K + 1 policy samples, the best by the critics.

    python examples/bon_sac.py                      # Hopper-v4, paper-scale budget
    python examples/bon_sac.py preset=quick         # Pendulum-v1

TorchRL's SAC (same networks, budget and schedule as ``sac.py``), acting with the best of
``bon.num_samples`` policy samples by the trained critics' minimum, and the same selection for
the TD target's next action: the critic evaluations of an HMC chain of ``K = N - 1`` steps,
spent on selection. A gain of HMC-SAC is credited to the chain only above this.

The method is :class:`torchrl_mcmc.recipes.BestOfNSAC`; the loop below is
:func:`torchrl_mcmc.recipes.train`'s, and :class:`torchrl_mcmc.recipes.Run` does what is
around it. Configuration: ``torchrl_mcmc/recipes/config/bon_sac.yaml``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from torchrl_mcmc.recipes import BestOfNSAC, Run, check_command_line


@hydra.main(
    config_path="pkg://torchrl_mcmc.recipes.config", config_name="bon_sac", version_base="1.3"
)
def main(cfg: DictConfig) -> None:
    # Opens the run directory (new, or resume=), then builds the method, replay buffer, logger
    # and collector; on leaving, writes the last checkpoint and summary.json.
    with Run(cfg, BestOfNSAC) as run:
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
    check_command_line("bon_sac")  # unknown keys and options: exit 2, naming the nearest
    main()
