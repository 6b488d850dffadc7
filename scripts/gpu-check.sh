#!/usr/bin/env bash
# GPU checks, for a machine with an NVIDIA GPU and a CUDA 12 driver:
#   1. installs dagflow's `gpu` extra (dask-cuda, cupy) into the virtualenv, from wheels;
#   2. runs the tests under the `gpu` marker (numpy against cupy, dispatch on a device);
#   3. runs the GPU routing and fall-back tests that also run without a GPU;
#   4. runs the GPU benchmark (kernels and a workload on --cluster local-cuda).
# Usage: scripts/gpu-check.sh [--quick]     (PYTHON=... to use another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
QUICK="${1:-}"

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L; then
    echo "gpu-check: no NVIDIA GPU visible (nvidia-smi); nothing to check" >&2
    exit 2
fi

# the extra's requirements, read from pyproject.toml so that they stay in one place
mapfile -t REQUIREMENTS < <("$PY" - <<'PYTHON'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["gpu"]))
PYTHON
)
echo "gpu-check: installing ${REQUIREMENTS[*]}"
"$PY" -m pip install --only-binary=:all: "${REQUIREMENTS[@]}"
"$PY" - <<'PYTHON'
import cupy, dask_cuda
print("cupy", cupy.__version__, "devices:", cupy.cuda.runtime.getDeviceCount(),
      "| dask-cuda", dask_cuda.__version__)
PYTHON

"$PY" -m pytest -m gpu -v -rs tests/test_gpu.py
"$PY" -m pytest -v tests/test_gpu.py -m "not gpu"
"$PY" -m benchmarks gpu ${QUICK:+--quick}
