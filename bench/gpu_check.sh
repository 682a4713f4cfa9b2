#!/usr/bin/env bash
# Every GPU figure of README "Performance" and the CUDA tests, in one prepared run (about 5 minutes on an
# H200). Run from the repository root with open_clip importable (shared/docs/gpu-check.md: how to carry it):
#
#     OUT=/tmp/gpu-check bash bench/gpu_check.sh
#
# Each step runs under its own time limit and its output goes to $OUT/<step>.log, so one failing or slow step
# never loses the others. The last lines printed are a summary of every step's exit status and seconds.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import insightface" 2>/dev/null; then
    # tests/test_encode.py imports insightface at module level; its CUDA tests never detect faces
    mkdir -p /tmp/gpu-check-stub/insightface && touch /tmp/gpu-check-stub/insightface/__init__.py
    export PYTHONPATH="/tmp/gpu-check-stub${PYTHONPATH:+:$PYTHONPATH}"
fi

SUMMARY=()
step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s, $(date -u +%H:%M:%S))"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    SUMMARY+=("$name: exit $rc after $((SECONDS - start)) s")
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 \
    | tee "$OUT/gpu.txt"
"$PYTHON" -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__file__)"

step cuda-tests "${LIMIT_TESTS:-130}" "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider -W ignore \
    tests/test_encode.py tests/test_vit_forward.py tests/test_splice.py
step encode "${LIMIT_ENCODE:-120}" "$PYTHON" bench/encode.py --size real --device cuda --repeats 20
step features "${LIMIT_FEATURES:-200}" "$PYTHON" bench/features.py --device cuda --batch-size 256 --batches 5 \
    --end-to-end 4096 --workers 12

printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
