#!/usr/bin/env bash
# The project's test command (README and .ci/run call exactly this): set up on first use,
# lint, then run the test suite and the docstring examples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
