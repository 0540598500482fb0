#!/usr/bin/env bash
# The ImageNet path on a CUDA machine, in one go (issue #12): the CUDA tests of the loader,
# evaluation and snapshot code, the paper preset's step time at the preset's batch and at
# an 8-GPU rank's share, and the loader against torchvision's ImageFolder up to 16 workers.
#   bash benchmarks/gpu_imagenet.sh [OUT_DIR]     (default: benchmarks/results/gpu-imagenet)
# Runs natkit from this checkout (no install needed); POT and scipy must be importable.
# Each step has its own time limit, so a slow one costs its own numbers, not the others'.
set -uo pipefail
cd "$(dirname "$0")/.."
final=${1:-benchmarks/results/gpu-imagenet}
mkdir -p "$final"
out=$(mktemp -d)  # every log and result; the few files worth keeping are copied at the end
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NATKIT_DISABLE_PLUGIN_AUTOLOAD=1  # only natkit's own components are timed
data=$(mktemp -d)/paper  # one generated folder for every smoke run
status=0
step() {  # step NAME SECONDS CMD...: run one step with a limit, log it, remember failures
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - t0)) s"; tail -n 4 "$out/$name.log"
    [[ $rc -eq 0 ]] || status=1
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc
  python3 -c "import sys, torch, torchvision, ot; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'pot', ot.__version__)"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

# natkit is not installed there: its pytest plugin (fixtures) is loaded by name
step cuda-tests 150 env NATKIT_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider \
    -p natkit.testing -o addopts="" tests/test_snapshots.py tests/test_loader.py tests/test_eval_store.py \
    tests/test_crops.py tests/test_engine.py tests/test_transfer.py

# the paper preset at batch 256 (one GPU): from disk, cycling over 4,500 JPEGs for 80 steps
# (more steps than the 16 workers prefetch, so the loader is timed too), then from memory
# (the GPU's own pace); then batch 32 (one rank's share of 8 GPUs) from memory
smoke=(python3 -m benchmarks.paper_smoke --device cuda --keep-data "$data" --images 4500)
step paper-b256-disk 120 "${smoke[@]}" --steps 80 --warmup 20 --batch-size 256 --workers 16 \
    --out "$out/b256-disk"
step paper-b256-memory 90 "${smoke[@]}" --steps 14 --warmup 4 --batch-size 256 --workers 0 \
    --set data.cache=true --out "$out/b256-memory"
step paper-b32-memory 60 "${smoke[@]}" --steps 60 --warmup 10 --batch-size 32 --workers 0 \
    --set data.cache=true --out "$out/b32-memory"

step loader 200 python3 -m benchmarks.loader --workers 0 4 16 --imagenet 512 \
    --large 0 --out "$out"  # the ~3000x2000 folder would take minutes at 0 workers

# at most a handful of files: the machine, the smoke runs in one JSON, the loader, all logs
cp "$out/machine.txt" "$final/"
python3 - "$out" "$final/paper_smoke.json" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = {d.name: json.loads((d / "paper_smoke.json").read_text())
        for d in sorted(out.iterdir()) if (d / "paper_smoke.json").is_file()}
pathlib.Path(sys.argv[2]).write_text(json.dumps(runs, indent=2) + "\n")
PY
for f in loader.md loader.json; do [[ -f "$out/$f" ]] && cp "$out/$f" "$final/"; done
for log in "$out"/*.log; do echo "=== $(basename "$log")"; cat "$log"; done > "$final/logs.txt"
echo "done: exit $status"
exit $status
