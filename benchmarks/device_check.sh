#!/usr/bin/env bash
# The GPU check, one prepared command that ends within 8 minutes. On a CUDA machine, from any
# directory:
#   0. (WHEELS=<dir>) the carried wheels installed from <dir> alone, no index, no dependency
#      resolved, into a folder of their own (SITE) put on PYTHONPATH: the machine's own torch
#      is the one used, never one installed here;
#   1. the tests that need CUDA: tests/test_cuda.py (the actors collecting on the device, one
#      update of each loss on the device against the CPU, each script's smoke run and resume
#      with device=cuda) and the `-k cuda` tests of the actor test files, 6 at a time when
#      pytest-xdist is there; their log beside the result;
#   2. the update and collection benchmark on `cuda` (benchmarks/update_speed.py) at K = 5:
#      sac, hmc_sac's default (entropy_lcb), bon_sac, td3 and ld_td3 eagerly; SAC's and the
#      default's critic loss with torch.compile, and with CUDA graphs (mode reduce-overhead;
#      the chain stays eager, it double-backwards); collection eager and with
#      collector.compile_policy=true;
#   3. a check of the result file, benchmarks/results/update_speed_cuda.json.
# Each stage has its own time limit; the benchmark writes its file after every stage, so a stage
# cut short leaves what the earlier ones measured.
#
#   WHEELS=benchmarks/device/wheels bash benchmarks/device_check.sh   # on the GPU machine
#   DRY_RUN=1 bash benchmarks/device_check.sh    # on CPU in about a minute when idle: tiny
#                                                # networks, a few updates, eager collection,
#                                                # CUDA tests listed only; writes to $OUTPUT
#                                                # (default: a temp dir)
#
# Environment: PYTHON (default python3) must import the project's dependencies, or those the
# machine's image lacks come from WHEELS (benchmarks/device/fetch_wheels.sh fetches them; the
# folder travels beside the working tree); SITE (default: a temp dir) is where they go; OUTPUT
# overrides the result path (the test log goes beside it, <name>_tests.log); OUT, when set,
# receives a copy of both.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
CUDA_TESTS=(tests/test_cuda.py tests/test_hmc_actor.py tests/test_langevin.py)

failed=0
stage() {  # stage <name> <seconds> <command...>: runs it under a time limit, reports, goes on
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@"
    local code=$?
    if ((code == 124 || code == 137)); then
        echo "=== $name: cut at ${limit}s"
        failed=1
    elif ((code != 0)); then
        echo "=== $name: exit $code"
        failed=1
    fi
    return $code
}

if [[ -n "${WHEELS:-}" ]]; then
    SITE=${SITE:-$(mktemp -d)/site}
    stage "install the carried wheels into $SITE" 45 "$PYTHON" -m pip install -q --no-index \
        --no-deps --no-compile --no-cache-dir --disable-pip-version-check --target "$SITE" \
        "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:$SITE"
fi
"$PYTHON" -c "import platform, torch, torchrl, tensordict, gymnasium, mujoco, hydra
print('versions: python', platform.python_version(), 'torch', torch.__version__, 'torchrl',
      torchrl.__version__, 'tensordict', tensordict.__version__, 'gymnasium',
      gymnasium.__version__, 'mujoco', mujoco.__version__, 'hydra', hydra.__version__)
print('torch from', torch.__path__[0], '; torchrl from', torchrl.__path__[0])" || exit 1

default_output=benchmarks/results/update_speed_cuda.json
[[ -n "${DRY_RUN:-}" ]] && default_output=$(mktemp -d)/update_speed_dry.json
OUTPUT=${OUTPUT:-$default_output}
LOG=${OUTPUT%.json}_tests.log
mkdir -p "$(dirname "$OUTPUT")"

if [[ -n "${DRY_RUN:-}" ]]; then
    # Generous limits: the dry run checks the script, not the speed, and a CPU machine may be
    # busy (two training runs on two cores take it past 120 s); no 8-minute budget to keep.
    check_limit=60
    # The CUDA tests that the real run executes: they must exist (ten at least).
    stage "CUDA tests (listed)" 120 bash -c \
        "'$PYTHON' -m pytest --collect-only -q -p no:cacheprovider -k cuda ${CUDA_TESTS[*]} \
         | tee '$LOG' | grep -cE '^tests/[^ ]+::[^ ]+$' \
         | awk '{ print \$1 \" CUDA tests\"; exit (\$1 < 10) }'"
    stage "benchmark (CPU, tiny)" 300 "$PYTHON" -m benchmarks.update_speed --device cpu \
        --configs sac exact_alternating entropy_lcb bon_sac ld_td3 --num-steps 1 \
        --hidden 32 32 --batch-size 32 --updates 4 --warmup 1 --chunk 2 --profile-updates 2 \
        --collection-policies sac entropy_lcb --collection-frames 100 --frames-per-batch 50 \
        --no-compile-collection --output "$OUTPUT"
else
    check_limit=15  # 45 + 120 + 270 + 15 s and the imports: inside the 8 minutes
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    parallel=()
    if "$PYTHON" -c "import xdist" 2>/dev/null; then
        parallel=(-n 6)
    fi
    stage "CUDA tests" 120 bash -c \
        "set -o pipefail; '$PYTHON' -m pytest -q -p no:cacheprovider -rs ${parallel[*]} \
         -k cuda ${CUDA_TESTS[*]} 2>&1 | tee '$LOG'"
    stage "benchmark (cuda)" 270 "$PYTHON" -m benchmarks.update_speed --device cuda \
        --configs sac entropy_lcb bon_sac td3 ld_td3 --num-steps 5 --updates 100 --warmup 10 \
        --chunk 10 --profile-updates 10 --collection-policies sac entropy_lcb \
        --collection-frames 1000 --frames-per-batch 250 --compile-critic-loss compile cudagraphs \
        --output "$OUTPUT"
fi
stage "result check" "$check_limit" "$PYTHON" -m benchmarks.update_speed --check "$OUTPUT"
if [[ -n "${OUT:-}" ]]; then
    for file in "$OUTPUT" "$LOG"; do
        [[ -f $file ]] && cp "$file" "$OUT/"
    done
fi
echo "=== device check: $([[ $failed == 0 ]] && echo passed || echo FAILED) ($OUTPUT)"
exit $failed
