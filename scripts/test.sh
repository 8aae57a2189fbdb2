#!/usr/bin/env bash
# The project's test command (README and .ci/run call exactly this): set up on first use,
# lint, then run the test suite and the docstring examples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One torch thread per process unless the caller says otherwise: the suite's networks are small,
# and two threads a process on a machine whose cores are busy (a training run beside, the test
# subprocesses) spin against each other (`test_plain_loop_on_pendulum_with_pid`: 407 s at two
# threads beside one training run, 36 s at one thread beside two).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
