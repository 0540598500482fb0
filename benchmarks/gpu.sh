#!/usr/bin/env bash
# The CUDA checks and the GPU speed tables in one go, for a machine with a CUDA GPU and PyTorch.
#   bash benchmarks/gpu.sh [OUT_DIR]     (default: benchmarks/results/gpu)
# Runs natkit from this checkout (no install needed); POT and scipy must be importable.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NATKIT_DISABLE_PLUGIN_AUTOLOAD=1  # only natkit's own components are timed
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/machine.txt"
python3 -c "import torch, ot; print('torch', torch.__version__, 'pot', ot.__version__)" | tee -a "$out/machine.txt"

# the speed suite on the GPU: solvers on the device, NAT against supervised steps, switches;
# SESSION=1 runs the short configuration instead (~150 s on an H200: b <= 1024, the paper's and
# the default's steps with hungarian and auction, profiles of the reassigning step)
python3 -m benchmarks.speed --device cuda ${SESSION:+--session} --out "$out" > "$out/speed.log" 2>&1
speed=$?
tail -n 5 "$out/speed.log"

# the CUDA paths: every solver and the assignment on cuda, the transfer, and the engine's
# tiny runs (resumes, switches, refused solver answers) on the GPU
NATKIT_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/test_solvers.py tests/test_assignment.py tests/test_transfer.py tests/test_engine.py \
    tests/test_solver_output.py tests/test_auction_candidate.py 2>&1 | tail -n 25 | tee "$out/tests.txt"
tests=${PIPESTATUS[0]}
echo "speed suite exit $speed, CUDA tests exit $tests"
exit $(( speed != 0 || tests != 0 ))
