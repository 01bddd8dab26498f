#!/bin/bash
# Everything the WKV kernel needs checked on a GPU, in one call (one device lease, ~4-6 min):
# build, test/test_wkv_cuda.py, bench/wkv.py --profile, compute-sanitizer on bench/wkv_sanitize.py.
#
#   bash bench/wkv_gpu_run.sh ESPNET_SRC [WHEEL_DIR]
#
# Run from the repository root (or a copy of its tracked tree). ESPNET_SRC: a folder with
# ESPnet's wkv_op.cpp and wkv_cuda.cu; WHEEL_DIR: wheels to install (fla-core) into
# /tmp/site. Logs and results go to $OUT (default /tmp/wkv_out).
set -u
ESP=$(realpath "$1"); WHL=${2:-}
OUT=${OUT:-/tmp/wkv_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:/tmp/site
t0=$(date +%s); stamp() { echo "## $(( $(date +%s) - t0 ))s $*"; }
[ -n "$WHL" ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHL"/*.whl
# ESPnet's kernel builds in the background, with the name, flags and paths bench/wkv.py uses.
(cd bench && python3 -c "import wkv; wkv.load_espnet('$ESP', 16384)" > "$OUT/espnet_build.log" 2>&1 &)
stamp build
python3 -c "from espnet_rwkv.ops import extension; extension.load('wkv', 'cuda')" > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
stamp tests
timeout 200 python3 -m pytest -q -n 8 test/test_wkv_cuda.py > "$OUT/tests.txt" 2>&1; tail -15 "$OUT/tests.txt"
stamp bench
timeout 240 python3 bench/wkv.py --espnet-src "$ESP" --profile 2>&1 | grep -v Warning | tee "$OUT/bench.txt"
stamp memcheck
timeout 120 compute-sanitizer --tool memcheck python3 bench/wkv_sanitize.py > "$OUT/sanitizer.txt" 2>&1
tail -4 "$OUT/sanitizer.txt"
stamp done
