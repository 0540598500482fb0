#!/usr/bin/env bash
# The ImageNet path on a CUDA machine, in one go (issues #12, #21), in about 300 s: the CUDA
# tests of the loader, evaluation and snapshot code; the paper preset's pace from memory, the
# JPEG folder (CPU decode, nvJPEG) and shards (benchmarks/end_to_end.py); its step time at an
# 8-GPU rank's share; and the loader against torchvision's ImageFolder at 0 and 16 workers.
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
step cuda-tests 35 env NATKIT_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider \
    -p natkit.testing -o addopts="" tests/test_snapshots.py tests/test_loader.py tests/test_eval_store.py \
    tests/test_crops.py tests/test_engine.py tests/test_transfer.py

# the paper preset at batch 256 from memory, the folder and shards, fp32 and amp, 16 workers:
# 20,000 generated JPEGs; 40 timed steps (more than the workers prefetch) after 10; the
# benchmark keeps to its own budget (each run to --run-limit-s) and writes what it measured
step end-to-end 215 python3 -m benchmarks.end_to_end --device cuda --images 20000 \
    --steps 50 --warmup 10 --workers 16 --run-limit-s 40 --budget-s 195 --out "$out"

# batch 32 (one rank's share of 8 GPUs) from memory; batch 256 is end-to-end's memory row
smoke=(python3 -m benchmarks.paper_smoke --device cuda --keep-data "$data" --images 400)
step paper-b32-memory 25 "${smoke[@]}" --steps 40 --warmup 10 --batch-size 32 --workers 0 \
    --set data.cache=true --out "$out/b32-memory"

step loader 35 python3 -m benchmarks.loader --workers 0 16 --imagenet 256 --large 0 \
    --batches-per-worker 4 --out "$out"  # the ~3000x2000 folder would take minutes at 0 workers

# at most a handful of files: the machine, the smoke runs in one JSON, the loader, all logs
cp "$out/machine.txt" "$final/"
python3 - "$out" "$final/paper_smoke.json" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = {d.name: json.loads((d / "paper_smoke.json").read_text())
        for d in sorted(out.iterdir()) if (d / "paper_smoke.json").is_file()}
pathlib.Path(sys.argv[2]).write_text(json.dumps(runs, indent=2) + "\n")
PY
for f in loader.md loader.json end_to_end.md end_to_end.json; do [[ -f "$out/$f" ]] && cp "$out/$f" "$final/"; done
for log in "$out"/*.log; do echo "=== $(basename "$log")"; cat "$log"; done > "$final/logs.txt"
echo "done: exit $status"
exit $status
