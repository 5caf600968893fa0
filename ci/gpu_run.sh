#!/usr/bin/env bash
# The GPU run behind the closing notes: backends, the property suite over the GPU backends (gpu
# profile), the capability audit and the benchmarks. From the repo root on a GPU machine:
#   OUT=/tmp/out bash ci/gpu_run.sh          (SKIP_BENCH=1 to leave out the benchmarks)
# Full results land in $OUT (cases.tgz holds every failing case file); short tables print last.
set -uo pipefail
OUT=${OUT:-moecheck-report/gpu}; mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"

MC="python3 -m moecheck.ci.cli"
nvidia-smi -L; python3 -c "import torch, triton, hypothesis; print('torch', torch.__version__, 'triton', triton.__version__, 'hypothesis', hypothesis.__version__)"
$MC backends -v > "$OUT/backends.txt" 2>&1
MOECHECK_PROFILE=gpu MOECHECK_MAX_EXAMPLES=${SUITE_EXAMPLES:-100} timeout ${GPU_SUITE_S:-240} $MC run -n ${WORKERS:-4} \
  --report "$OUT/suite" --backend torch_grouped_mm --backend torch_scaled_grouped_mm > "$OUT/suite.log" 2>&1
echo "suite rc=$?"
MOECHECK_PROFILE=gpu MOECHECK_MAX_EXAMPLES=${COMPILE_EXAMPLES:-12} timeout ${COMPILE_S:-200} $MC run -n ${WORKERS:-4} \
  --report "$OUT/compile" --backend torch_compile --format bf16 --format fp8_block --format mxfp4_mxfp8 \
  --format fp8_token_channel --format nvfp4 > "$OUT/compile.log" 2>&1
echo "compile rc=$?"
timeout 120 $MC audit --backend torch_grouped_mm --backend torch_scaled_grouped_mm > "$OUT/audit.txt" 2>&1
[ -n "${SKIP_BENCH:-}" ] || timeout 150 python3 -W ignore -m moecheck.ci.bench --out "$OUT/bench.json" --examples 5 > "$OUT/bench.txt" 2>&1
tar czf "$OUT/cases.tgz" -C "$OUT" $(cd "$OUT" && ls -d */cases 2>/dev/null) 2>/dev/null
echo "== audit"; grep -v "^torch_grouped_mm *format" "$OUT/audit.txt" | tail -n 15
echo "== suite (torch grouped GEMMs)"; $MC report "$OUT/suite"
echo "== torch_compile"; $MC report "$OUT/compile"
