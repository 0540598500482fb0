#!/usr/bin/env bash
# Every GPU measurement of issues 21 and 22 in one call of about 9 minutes on a lent GPU:
# the auction solver against scipy, the NAT step against supervised with its profile, the
# paper preset end to end from each data path, and the CUDA tests (with a stack dump of every
# thread if pytest does not exit).
#   bash benchmarks/gpu_session.sh OUT_DIR
# Runs natkit from this checkout (no install needed); POT is installed from .whl/ if there.
# Each step has its own time limit, so a slow one costs its own numbers, not the others'.
set -uo pipefail
cd "$(dirname "$0")/.."
final=${1:?usage: gpu_session.sh OUT_DIR}
mkdir -p "$final"
out=$(mktemp -d)
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NATKIT_DISABLE_PLUGIN_AUTOLOAD=1  # only natkit's own components are timed
status=0
step() {  # step NAME SECONDS CMD...: run one step with a limit, log it, remember failures
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    # SIGUSR1 first: pytest below dumps every thread's stack on it; then SIGKILL 15 s later
    timeout -s USR1 -k 15 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - t0)) s"; tail -n 3 "$out/$name.log"
    [[ $rc -eq 0 ]] || status=1
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
  echo "cores $(nproc)"
  git log -1 --format='commit %H %s' 2>/dev/null || true
  python3 -c "import sys, torch, torchvision, triton, scipy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'triton', triton.__version__, 'scipy', scipy.__version__)"
  python3 -c "import ot; print('pot', ot.__version__)" || echo "pot missing"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

# issue 22: the fused auction against scipy on the same costs (times and exactness)
# (a sweep of launch settings at b = 256, then the default at 512 and 1024)
step auction 75 python3 -m benchmarks.gpu_auction --device cuda --sizes 256 \
    --configs default 8:2 16:8 32:8 --out "$out/auction"
step auction-large 35 python3 -m benchmarks.gpu_auction --device cuda --sizes 512 1024 \
    --configs default --out "$out/auction-large"
# issue 22: solvers at b 256..1024, the step tables and the reassignment step's profile
step speed 150 python3 -m benchmarks.speed --device cuda --session --out "$out/speed"
# issue 21: the paper preset from memory and from each data path, fp32 and amp + channels_last
# (the paths in the order of what they decide, should the budget run out: the GPU's pace,
# today's path, then the candidates)
step end-to-end 200 python3 -m benchmarks.end_to_end --device cuda --images 20000 --budget-s 185 \
    --path memory --path "folder, CPU decode" --path "raw shards" --path "JPEG shards, nvJPEG" \
    --path "folder, nvJPEG" --path "JPEG shards, CPU decode" --out "$out/e2e"
# issue 22 item 5: the corrected CUDA tests; a stack dump of every thread if pytest hangs
step cuda-tests 65 env NATKIT_TEST_DEVICE=cuda python3 -X faulthandler -c "
import faulthandler, signal, sys, pytest
faulthandler.register(signal.SIGUSR1, all_threads=True)
code = pytest.main(['-q', '-p', 'no:cacheprovider', '-p', 'no:benchmark', '-p', 'natkit.testing',
                    '-o', 'addopts=', 'tests/test_engine.py', 'tests/test_crops.py',
                    'tests/test_assignment.py',
                    'tests/test_solvers.py::test_every_solver_answers_on_the_costs_device'])
print('pytest.main returned', int(code), flush=True)
sys.exit(code)"
ps -eo pid,ppid,stat,etime,cmd --forest | grep -v " ps " > "$out/processes-after-tests.txt"

cp "$out/machine.txt" "$final/"
for log in "$out"/*.log; do echo "=== $(basename "$log")"; cat "$log"; done > "$final/logs.txt"
tar -C "$out" -czf "$final/results.tar.gz" --exclude='*.log' .
for f in auction/gpu_auction.md auction-large/gpu_auction.md speed/speed.md e2e/end_to_end.md; do
    [[ -f "$out/$f" ]] && { echo; cat "$out/$f"; }
done > "$final/summary.md"
echo "done: exit $status"
exit $status
