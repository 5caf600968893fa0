#!/usr/bin/env bash
# The GPU run behind the closing notes: backends, the property suite over the GPU backends (gpu
# profile), the capability audit and the benchmarks. Usage, from the repo root on a GPU machine:
#   OUT=/tmp/out bash moecheck/ci/gpu_run.sh
# Full results land in $OUT; a short table is printed last.
set -uo pipefail
OUT=${OUT:-moecheck-report/gpu}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
MC="python3 -m moecheck.cli"
nvidia-smi -L; python3 -c "import torch, triton, hypothesis; print('torch', torch.__version__, 'triton', triton.__version__, 'hypothesis', hypothesis.__version__)"
$MC backends -v | tee "$OUT/backends.txt"
MOECHECK_PROFILE=gpu timeout ${GPU_SUITE_S:-240} $MC run -n ${WORKERS:-4} --report "$OUT/suite" \
  --backend torch_grouped_mm --backend torch_scaled_grouped_mm > "$OUT/suite.log" 2>&1
echo "suite rc=$?"; tail -n 25 "$OUT/suite.log"
MOECHECK_PROFILE=gpu MOECHECK_MAX_EXAMPLES=${COMPILE_EXAMPLES:-12} timeout ${COMPILE_S:-200} $MC run -n ${WORKERS:-4} \
  --report "$OUT/compile" --backend torch_compile --format bf16 --format fp8_block --format mxfp4_mxfp8 \
  --format fp8_token_channel --format nvfp4 > "$OUT/compile.log" 2>&1
echo "compile rc=$?"; tail -n 12 "$OUT/compile.log"
timeout 120 $MC audit --backend torch_grouped_mm --backend torch_scaled_grouped_mm > "$OUT/audit.txt" 2>&1; tail -n 40 "$OUT/audit.txt"
timeout 120 python3 -m moecheck.ci.bench --out "$OUT/bench.json" --examples 5 | tee "$OUT/bench.txt"
