#!/usr/bin/env bash
# Every GPU figure of README "Performance" and the CUDA tests, in one prepared run (about 8 minutes at most on
# an H100/H200; each step's limit below, 505 s in all). Run from the repository root:
#
#     OUT=/tmp/gpu-check bash bench/gpu_check.sh
#
# open_clip must be importable. Where it is not (a GPU machine with torch but no open_clip and no package
# registry), wheels in .whl/ are installed into a temporary folder first. Download them beforehand on a
# machine with package access, for the GPU machine's Python (here 3.12), and take .whl/ along:
#
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       open_clip_torch==2.20.0 ftfy==6.3.1 wcwidth
#
# Each step runs under its own time limit and its output goes to $OUT/<step>.log, so one failing or slow step
# never loses the others. The last lines printed are a summary of every step's exit status and seconds.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/gpu-check-site}

if ! "$PYTHON" -c "import open_clip" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PYTHON" -c "import insightface" 2>/dev/null; then
    # tests/test_encode.py imports insightface at module level; its CUDA tests never detect faces
    mkdir -p "$SITE/insightface" && touch "$SITE/insightface/__init__.py"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
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
"$PYTHON" -c "import torch, open_clip; from open_clip.version import __version__ as v; print('torch', torch.__version__, 'open_clip', v)" \
    2>&1 | tee -a "$OUT/gpu.txt"

# the CUDA tests: offload frees the GPU (item 5's baseline), graphs equal eager, fused forward at real shapes
step cuda-tests "${LIMIT_TESTS:-100}" "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider -W ignore \
    tests/test_encode.py tests/test_vit_forward.py tests/test_splice.py
# encode: cold load vs plain read, offloaded (pageable, pinned, lowvram), raw copies, warm graph vs eager,
# peak and held GPU memory
step encode "${LIMIT_ENCODE:-110}" "$PYTHON" bench/encode.py --size real --device cuda --repeats 20
# features: open_clip's forward, the fused one and compiled blocks at batch 256, then the real stage end to
# end on 4,096 PNG crops; the same towers at batch 64 without compiling
step features "${LIMIT_FEATURES:-190}" "$PYTHON" bench/features.py --device cuda --batch-size 256 \
    --batches 5 --end-to-end 4096 --workers 12
step features-64 "${LIMIT_FEATURES_64:-45}" "$PYTHON" bench/features.py --device cuda --batch-size 64 \
    --batches 10 --variants open_clip,fused
# head training, one process
step train "${LIMIT_TRAIN:-60}" "$PYTHON" bench/train.py --device cuda --nproc 1 --hidden-dim 2048 \
    --batch-size 1024 --steps 100

printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
