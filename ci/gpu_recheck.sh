#!/usr/bin/env bash
# The H200 re-check of 2026-12-01 after the combine fix: every docs/findings case replayed on the GPU,
# then the reported-on-their-own properties of the torch backends. From the repo root on a GPU machine:
#   OUT=/tmp/out bash ci/gpu_recheck.sh
set -uo pipefail
OUT=${OUT:-moecheck-report/gpu-recheck}; mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"

timeout 60 python3 -m pytest -p no:cacheprovider -p no:xdist -q -rA tests/backends/test_findings.py 2>&1 \
  | grep -E "PASS|FAIL|passed|failed" | cut -c1-170
MOECHECK_PROFILE=gpu MOECHECK_MAX_EXAMPLES=${EX:-40} timeout ${SUITE_S:-95} python3 -m moecheck.ci.cli run -n 4 --report "$OUT/det" \
  --backend torch_grouped_mm --backend torch_scaled_grouped_mm \
  --property deterministic --property permutation_equivariant --property batch_invariant > "$OUT/det.log" 2>&1
echo "rc=$?"
python3 -m moecheck.ci.cli report "$OUT/det"
