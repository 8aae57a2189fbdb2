#!/usr/bin/env bash
# Tier L (docs/benchmarks.md §3): Hopper-v4, HalfCheetah-v4 and Ant-v4, 500k frames, 5 seeds,
# every method, as Hydra multiruns through the submitit launcher (one SLURM job per run).
#
#   PARTITION=gpu bash benchmarks/tier_l.sh                    # submit to SLURM, GPU jobs
#   LAUNCHER=submitit_local SMOKE=1 bash benchmarks/tier_l.sh  # local check on a smoke budget
#
# Each run lands where `benchmarks/learning.py` looks for tier L runs
# (runs/benchmarks/L/<method>/<env>/seed<N>), so afterwards
#   python benchmarks/learning.py collect --tier L && python benchmarks/learning.py aggregate --tier L
# copies and aggregates them. A pre-empted job (SIGTERM) checkpoints before it exits; rerunning
# this script is not a resume: continue one with `python examples/<method>.py resume=<its dir>`.
# Needs `pip install -e ".[cluster]"` (hydra-submitit-launcher).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
LAUNCHER="${LAUNCHER:-submitit_slurm}"
METHODS="${METHODS:-sac hmc_sac bon_sac td3 ld_td3}"
ROOT="${ROOT:-runs/benchmarks/L}"
if [ "${SMOKE:-0}" = 1 ]; then
  grid=(env=Hopper-v4 seed=0,1 preset=smoke)
else
  grid=(env=Hopper-v4,HalfCheetah-v4,Ant-v4 seed=0,1,2,3,4 collector.total_frames=500000
        eval.interval_frames=10000 eval.episodes=10)
fi
if [ "$LAUNCHER" = submitit_slurm ]; then
  launcher=(hydra/launcher=submitit_slurm "hydra.launcher.partition=${PARTITION:?set PARTITION}"
            hydra.launcher.gpus_per_node=1 hydra.launcher.cpus_per_task=8
            hydra.launcher.timeout_min=2880 device=cuda threads=8)
else
  launcher=(hydra/launcher=submitit_local hydra.launcher.cpus_per_task=1
            hydra.launcher.timeout_min=30 threads=1)
fi
for method in $METHODS; do
  "$PYTHON" "examples/$method.py" -m "${launcher[@]}" "${grid[@]}" progress_bar=false \
    "hydra.sweep.dir=$ROOT/$method" 'hydra.sweep.subdir=${env.name}/seed${seed}'
done
