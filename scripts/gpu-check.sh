#!/usr/bin/env bash
# GPU checks, in two halves (a GPU machine may have no network), and a check of the extras.
#
#   scripts/gpu-check.sh prepare
#       Here, with the package index: download the wheels the GPU machine lacks (the
#       dependencies of dagflow and dask-cuda, less the packages its image already has,
#       listed in scripts/gpu-image-packages.txt) for CPython 3.12 on manylinux x86_64
#       into .gpu-wheels/ (ignored by git), plus nvImageCodec for the GPU-decode figures,
#       and the build wheels for an offline install of dagflow. Prints the total size.
#
#   scripts/gpu-check.sh run [OUTDIR]
#       There, without network, with the image's Python (PYTHON, default python3) and
#       its own cupy: install .gpu-wheels/ offline (no index, no dependencies resolved),
#       dagflow from this tree without dependencies, then run the `gpu`-marked tests,
#       tests/test_gpu.py's other tests, and the quick GPU benchmark (under 5 minutes in
#       all). Writes into OUTDIR (default $OUT, else gpu-check-out/): env.json (what was
#       installed, imported and found: versions, device, GPU decoders), pytest-gpu.xml
#       and pytest-gpu.log (the test report), benchmark.json and benchmark.log.
#
#   scripts/gpu-check.sh extra [cuda12|cuda13]
#       Here: install '.[gpu-cuda12]' (or cuda13) into a fresh virtualenv and check that
#       dask_cuda, cupy and cupyx.scipy.ndimage import without a GPU, then run the tests
#       that bind dagflow's calls against the real cupy and dask-cuda signatures.
#       Several GB of CUDA libraries: not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
HELPER=scripts/gpu_check.py

case "${1:-}" in
prepare)
    PY="${PYTHON:-.venv/bin/python}"
    [ -x "$PY" ] || PY=python3
    "$PY" "$HELPER" wheels --dest "$WHEELS" --image scripts/gpu-image-packages.txt "${@:2}"
    ;;

run)
    PY="${PYTHON:-python3}"
    OUTDIR="${2:-${OUT:-gpu-check-out}}"
    mkdir -p "$OUTDIR"
    [ -d "$WHEELS" ] || { echo "gpu-check: no $WHEELS/ (run 'scripts/gpu-check.sh prepare' where there is network, and carry it)" >&2; exit 2; }
    nvidia-smi -L || echo "gpu-check: nvidia-smi lists no GPU" >&2
    # the packages the image lacks, as they are: nothing is resolved, nothing fetched
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
        "$WHEELS"/*.whl
    # dagflow from this tree; its build backend (setuptools, wheel) from the build folder
    "$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check \
        --find-links "$WHEELS/build" -e .
    "$PY" -m pip check > "$OUTDIR/pip-check.txt" 2>&1 || true
    "$PY" "$HELPER" env --out "$OUTDIR/env.json" || true
    export PYTHONUNBUFFERED=1
    set +e
    # the GPU tests, then the rest of tests/test_gpu.py (routing, fall back, stand-in)
    # on a machine that has a GPU: both must pass there
    timeout 170 "$PY" -m pytest tests/test_gpu.py -p no:cacheprovider -rs -q \
        --junitxml="$OUTDIR/pytest-gpu.xml" 2>&1 | tee "$OUTDIR/pytest-gpu.log"
    tests=${PIPESTATUS[0]}
    timeout 150 "$PY" -m benchmarks.gpu --quick --json "$OUTDIR/benchmark.json" 2>&1 \
        | tee "$OUTDIR/benchmark.log"
    bench=${PIPESTATUS[0]}
    set -e
    echo "gpu-check: tests exit $tests, benchmark exit $bench; results in $OUTDIR"
    [ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
    ;;

extra)
    which="${2:-cuda12}"
    PY="${PYTHON:-python3}"
    venv="$(mktemp -d)/venv"
    trap 'rm -rf "$(dirname "$venv")"' EXIT
    "$PY" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check ".[gpu-$which,test]"
    "$venv/bin/python" -c "import dask_cuda, cupy, cupyx.scipy.ndimage; print('imported: dask_cuda', dask_cuda.__version__, '| cupy', cupy.__version__)"
    "$venv/bin/python" -m pytest tests/test_gpu.py -p no:cacheprovider -q -rs -k bound_against
    ;;

*)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
    ;;
esac
