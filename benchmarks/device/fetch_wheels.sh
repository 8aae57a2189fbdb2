#!/usr/bin/env bash
# Downloads the wheels of benchmarks/device/requirements.txt for the GPU machine (CPython 3.12,
# manylinux x86-64, no package index) into benchmarks/device/wheels (git-ignored), and prints
# their total size. The GPU check installs them from there (WHEELS=benchmarks/device/wheels
# bash benchmarks/device_check.sh, the folder carried beside the working tree).
#
#   bash benchmarks/device/fetch_wheels.sh            # into benchmarks/device/wheels
#   WHEELS=/tmp/w bash benchmarks/device/fetch_wheels.sh
#
# Binary wheels only, no dependencies resolved: the list names every distribution the machine
# lacks. A requirement marked "# build" has no wheel on PyPI (only an sdist): it is built here
# with `pip wheel --no-deps`, and must come out pure Python (py3-none-any), the only kind a
# build here makes right for the GPU machine. The folder is made anew each time (pip's cache
# keeps that cheap), so that it holds one version of each and nothing stale. Fails above
# LIMIT_MIB (default 40): the working tree must fit beside the wheels in a call's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
REQUIREMENTS=benchmarks/device/requirements.txt
WHEELS=${WHEELS:-benchmarks/device/wheels}
LIMIT_MIB=${LIMIT_MIB:-40}
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
fi

platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 \
    manylinux_2_5 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done

fresh=$(mktemp -d "${WHEELS%/}.new.XXXXXX")
lists=$(mktemp -d)
trap 'rm -rf "$fresh" "$lists"' EXIT
# The requirement lines without and with the "# build" mark (comments and blank lines dropped).
sed -e '/# *build/d' -e 's/#.*//' -e '/^[[:space:]]*$/d' "$REQUIREMENTS" >"$lists/binary"
sed -n -e 's/^\([^#]*[^#[:space:]]\)[[:space:]]*# *build.*/\1/p' "$REQUIREMENTS" >"$lists/built"

"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 "${platforms[@]}" -d "$fresh" -r "$lists/binary"
if [[ -s "$lists/built" ]]; then
    mkdir "$lists/wheels"
    "$PYTHON" -m pip wheel -q --no-deps --no-binary=:all: -w "$lists/wheels" -r "$lists/built"
    for wheel in "$lists/wheels"/*.whl; do
        if [[ $wheel != *-none-any.whl ]]; then
            echo "fetch_wheels: $(basename "$wheel") was built here but is not pure Python" >&2
            exit 1
        fi
    done
    mv "$lists/wheels"/*.whl "$fresh"/
fi

expected=$(($(wc -l <"$lists/binary") + $(wc -l <"$lists/built")))
found=$(find "$fresh" -name '*.whl' | wc -l)
if ((found != expected)); then
    echo "fetch_wheels: $found wheels for $expected requirements" >&2
    exit 1
fi
rm -rf "$WHEELS"
mv "$fresh" "$WHEELS"
bytes=$(du -cb "$WHEELS"/*.whl | tail -1 | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "fetch_wheels: $found wheels, $mib MiB in $WHEELS"
if ((bytes > LIMIT_MIB * 1048576)); then
    echo "fetch_wheels: over the ${LIMIT_MIB} MiB limit" >&2
    exit 1
fi
