#!/usr/bin/env bash
# The oldest tested torch, 2.11.0 (the GPU machine's), in a second environment, .venv-oldest,
# laid out as the GPU machine is: CPython 3.12, torch 2.11.0 and, in place of the image's own
# packages, benchmarks/device/image-requirements.txt; the rest (torchrl, tensordict, gymnasium,
# mujoco, hydra...: benchmarks/device/requirements.txt) installed from the fetched wheels alone
# into .venv-oldest/carried, as the GPU check installs them there. Then a fast subset of the
# tests: numerics, actors, losses, compiled acting, one smoke run per script, the wheel checks
# and the GPU check's dry run (the CUDA tests skip). Extra arguments go to pytest.
#
#   bash scripts/test_oldest.sh                 # PYTHON=<a python3.12> to choose the interpreter
#
# Idempotent: each layer is made again only when what it is made from changed. torch comes from
# PyTorch's CPU index where that is reachable, else from PyPI, whose Linux torch 2.11.0 is the
# CUDA 13.0 build (as the GPU machine's): about 2.6 GiB of wheels, 4.6 GB installed, and it runs
# on a CPU. Not part of CI: the first run spends minutes on that download alone.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=2.11.0
VENV=.venv-oldest
DEVICE=benchmarks/device

if [[ -z "${PYTHON:-}" ]]; then
    for candidate in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            PYTHON=$candidate
            break
        fi
    done
fi
: "${PYTHON:?no Python 3.12 found: set PYTHON to one}"

# 1. The image: Python 3.12, torch, the image's packages that the project needs.
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
stamp=$VENV/.image-installed
want="torch==$TORCH $(sha256sum "$DEVICE/image-requirements.txt" | cut -d' ' -f1)"
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q --index-url https://download.pytorch.org/whl/cpu \
        "torch==$TORCH" || "$VENV/bin/python" -m pip install -q "torch==$TORCH"
    "$VENV/bin/python" -m pip install -q -r "$DEVICE/image-requirements.txt"
    echo "$want" >"$stamp"
fi

# 2. What the GPU check carries: fetched, then installed from the folder alone.
stamp=$VENV/.carried-installed
want=$(sha256sum "$DEVICE/requirements.txt" | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" || ! -d $VENV/carried ]]; then
    bash "$DEVICE/fetch_wheels.sh"
    rm -rf "$VENV/carried"
    "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile \
        --target "$VENV/carried" "$DEVICE"/wheels/*.whl
    echo "$want" >"$stamp"
fi

# 3. The subset. Left out: the long training loops, Hopper (the smoke runs are on Pendulum).
export PYTHONPATH="$PWD:$PWD/$VENV/carried"
"$VENV/bin/python" -c "import torch, torchrl; print('torch', torch.__version__, 'torchrl',
    torchrl.__version__, 'from', torchrl.__file__)"
skip="not Hopper and not loop_on_pendulum and not trainer_with_pid_hook"
examples="(not test_examples or script_runs_end_to_end)"  # one smoke run per script
start=$SECONDS
status=0
"$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_integrators.py tests/test_hmc_actor.py tests/test_langevin.py \
    tests/test_best_of_n.py tests/test_hmc_loss.py tests/test_entropy_prior.py \
    tests/test_pessimism.py tests/test_compiled_acting.py tests/test_examples.py \
    tests/test_cuda.py tests/test_device_wheels.py \
    -k "$skip and $examples" "$@" || status=$?
echo "test_oldest: torch $TORCH, tests took $((SECONDS - start)) s, exit $status"
exit $status
