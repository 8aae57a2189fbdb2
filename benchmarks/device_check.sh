#!/usr/bin/env bash
# The GPU check, one prepared command that ends within 8 minutes. On a CUDA machine, from any
# directory:
#   1. the tests that need CUDA (`pytest -k cuda`; they skip on CPU);
#   2. the update and collection benchmark on `cuda` (benchmarks/update_speed.py): the
#      scripts' own updates eagerly; SAC's and the default configuration's critic loss with
#      torch.compile, and with CUDA graphs (mode reduce-overhead; the chain stays eager, it
#      double-backwards); collection eager and with collector.compile_policy=true;
#   3. a check of the result file, benchmarks/results/update_speed_cuda.json.
# Each stage has its own time limit; the benchmark writes its file after every stage, so a stage
# cut short leaves what the earlier ones measured.
#
#   bash benchmarks/device_check.sh              # on the CUDA machine
#   DRY_RUN=1 bash benchmarks/device_check.sh    # on CPU in about a minute when idle: tiny
#                                                # networks, a few updates, eager collection,
#                                                # CUDA tests listed only; writes to $OUTPUT
#                                                # (default: a temp dir)
#
# Environment: PYTHON (default python3) must import the project's dependencies
# (pip install -e ".[test]"); WHEELS=<dir> installs the wheels in <dir> first, for a machine
# without a package index; OUTPUT overrides the result path; OUT, when set, receives a copy of
# the result.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1

if [[ -n "${WHEELS:-}" ]]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

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
}

if [[ -n "${DRY_RUN:-}" ]]; then
    OUTPUT=${OUTPUT:-$(mktemp -d)/update_speed_dry.json}
    # Generous limits: the dry run checks the script, not the speed, and a CPU machine may be
    # busy (two training runs on two cores take it past 120 s); no 8-minute budget to keep.
    check_limit=60
    # The CUDA tests that the real run executes: they must exist (two at least).
    stage "CUDA tests (listed)" 120 bash -c \
        "'$PYTHON' -m pytest --collect-only -q -p no:cacheprovider -k cuda tests \
         | grep -c '::.*cuda' | awk '{ print \$1 \" CUDA tests\"; exit (\$1 < 2) }'"
    stage "benchmark (CPU, tiny)" 300 "$PYTHON" -m benchmarks.update_speed --device cpu \
        --configs sac exact_alternating entropy_fast bon_sac ld_td3 --num-steps 1 \
        --hidden 32 32 --batch-size 32 --updates 4 --warmup 1 --chunk 2 --profile-updates 2 \
        --collection-policies sac entropy_fast --collection-frames 100 --frames-per-batch 50 \
        --no-compile-collection --output "$OUTPUT"
else
    OUTPUT=${OUTPUT:-benchmarks/results/update_speed_cuda.json}
    check_limit=20  # 90 + 360 + 20 s: inside the 8 minutes
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    stage "CUDA tests" 90 "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda tests
    stage "benchmark (cuda)" 360 "$PYTHON" -m benchmarks.update_speed --device cuda \
        --configs sac exact_alternating exact_joint entropy entropy_fast bon_sac td3 ld_td3 \
        --num-steps 5 --updates 100 --warmup 10 --chunk 10 --profile-updates 10 \
        --collection-policies sac entropy_fast --collection-frames 2000 \
        --frames-per-batch 250 --compile-critic-loss compile cudagraphs --output "$OUTPUT"
fi
stage "result check" "$check_limit" "$PYTHON" -m benchmarks.update_speed --check "$OUTPUT"
if [[ -n "${OUT:-}" && -f "$OUTPUT" ]]; then
    cp "$OUTPUT" "$OUT/"
fi
echo "=== device check: $([[ $failed == 0 ]] && echo passed || echo FAILED) ($OUTPUT)"
exit $failed
