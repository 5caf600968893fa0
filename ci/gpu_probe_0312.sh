#!/usr/bin/env bash
# The one short H200 command of 2026-12-03 (about 4 device minutes were left): the error model's
# expected difference now float64 (it flushed to 0 at "tiny" values), checked on the two GPU cases it
# explains, then the torch backends' suite under the RMS/bias verdicts with its worst figures. From the
# repo root on the GPU machine, vLLM staged: OUT=dir bash ci/gpu_probe_0312.sh
set -uo pipefail
OUT=${OUT:-moecheck-report/probe}; mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"
export VLLM_LOGGING_LEVEL=ERROR
MOECHECK_PROFILE=gpu MOECHECK_MAX_EXAMPLES=${EX:-20} MOECHECK_NO_SHRINK=1 timeout ${SUITE_S:-110} \
  python3 -m moecheck.ci.cli run -n ${WORKERS:-8} --timeout 100 --report "$OUT/torch" \
  --backend torch_grouped_mm --backend torch_scaled_grouped_mm > "$OUT/torch.log" 2>&1 &
suite=$!
(for f in docs/findings/h100-2026-11-23/torch_scaled_grouped_mm-*0c7e750d44.json \
          docs/findings/h200-2026-12-02/open/vllm_triton_int4_w4a16-*-8d89cad9fd.json; do
   echo "== $f"; timeout 100 moecheck repro --unclaimed "$f" 2>&1 | grep -v "^WARNING" | head -n 4 | cut -c1-400
   echo "rc=${PIPESTATUS[0]}"
 done) > "$OUT/replays.txt" 2>&1
wait $suite; echo "suite rc=$?"
cat "$OUT/replays.txt"
python3 -m moecheck.ci.cli report "$OUT/torch" 2>&1 | tail -n 30 | cut -c1-250
python3 - "$OUT/torch/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in sorted(rows, key=lambda r: (r["backend"], r["format"], r["property"])):
    print(f'{r["backend"]:24} {r["format"]:18} {r["property"]:24} {r["outcome"]:8} n={r.get("examples_run")} '
          f'max={r.get("max_norm_err") or 0:.3g} rms={r.get("rms_norm_err") or 0:.3g} bias={r.get("bias") or 0:.3g}')
PY
