#!/usr/bin/env bash
# Quick training on a fresh machine: set up on first use, then HMC-SAC with the quick preset
# (Pendulum-v1, about a quarter of an hour on 2 CPU cores). Extra arguments are Hydra overrides, e.g.
#   bash scripts/train.sh                       # HMC-SAC, quick preset
#   bash scripts/train.sh seed=3 hmc.num_steps=10
#   SCRIPT=sac bash scripts/train.sh            # the TorchRL SAC baseline, same preset
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python "examples/${SCRIPT:-hmc_sac}.py" preset=quick "$@"
