#!/usr/bin/env bash
# The one short GPU run a session with ~8 device minutes can afford: this session's CUDA-side changes
# (reference grouped bmm, static NVFP4, pre_bias findings), the torch backends' property suite, the
# reference-vs-grouped_mm benchmark, then FlashInfer's quantizers on sm_90. From the repo root:
#   source .device/setup.sh; OUT=/tmp/out bash ci/gpu_short.sh
# Every step is bounded; short tables print last, full logs land in $OUT.
set -uo pipefail
OUT=${OUT:-moecheck-report/gpu-short}; mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"
export FLASHINFER_DISABLE_VERSION_CHECK=1
MC="python3 -m moecheck.ci.cli"
PT="python3 -m pytest -p no:cacheprovider -q -rA --tb=line"
nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
$MC backends -v > "$OUT/backends.txt" 2>&1
timeout 45 python3 -W ignore -c "from moecheck.ci.bench import gemm_vs_reference as g; print(g())" > "$OUT/gemm.txt" 2>&1
echo "gemm rc=$?"
timeout 60 $PT -p no:xdist tests/backends/test_findings.py tests/reference/test_grouped.py \
  tests/reference/test_nvfp4.py > "$OUT/findings.log" 2>&1
echo "findings rc=$?"
MOECHECK_PROFILE=gpu MOECHECK_MAX_EXAMPLES=${EX:-25} timeout ${SUITE_S:-120} $MC run -n 4 --report "$OUT/suite" \
  --backend torch_grouped_mm --backend torch_scaled_grouped_mm > "$OUT/suite.log" 2>&1
echo "suite rc=$?"
timeout ${FI_S:-140} $PT -p no:xdist -m gpu tests/backends/test_flashinfer_quant.py > "$OUT/fi_quant.log" 2>&1
echo "fi_quant rc=$?"
tar czf "$OUT/cases.tgz" -C "$OUT" suite/cases 2>/dev/null
echo "== gemm"; tail -n 2 "$OUT/gemm.txt"
echo "== findings / grouped / nvfp4 on CUDA"; tail -n 4 "$OUT/findings.log"
echo "== suite"; $MC report "$OUT/suite" 2>&1 | tail -n 8
echo "== flashinfer quant"; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$OUT/fi_quant.log" | sed 's/moecheck\/tests\/backends\/test_flashinfer_quant.py:://' | cut -c1-150 | tail -n 30
