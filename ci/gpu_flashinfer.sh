#!/usr/bin/env bash
# FlashInfer on one GPU (issue #4): which functions are correct, which refuse with a clear error, which
# return wrong results without complaint. From the repo root on the GPU machine, with the FlashInfer
# bundle staged in .device (shared/device/README.md: flashinfer-python==0.7.2.post1 apache-tvm-ffi==0.1.15.post2):
#
#   OUT=/tmp/out bash ci/gpu_flashinfer.sh [PHASE...]
#
# Phases, quick JIT modules first (one device command is capped at 10 minutes: run a few per command):
#   env      nvidia-smi, versions, `moecheck backends -v`
#   quant    quantizers code for code (mxfp8_quantize incl. the alignment padding, fp4_quantize NVFP4/MXFP4,
#            mxfp4_quantize/dequantize, block_scale_interleave) + our layouts vs FlashInfer's helpers
#   kernels  fused_topk_deepseek (DeepSeek-V3 routing) vs the reference router; mono_moe on its fixed shape
#   lora     the bgmv_moe LoRA backend through the property suite
#   cute     the CuTe-DSL SM90 bf16 MoE (needs nvidia-cutlass-dsl; skipped with the reason otherwise)
#   cutlass  cutlass_fused_moe backends: on sm_90 only with FLASHINFER_BUILD_SM90_MOE=1 (fused_moe_90 is 248
#            compile units, more than a session of 16-core compile time); SM100-class machines build theirs
#   audit    `moecheck audit` per available FlashInfer backend, one process each
#   summary  the short tables (always last)
# Default: env quant kernels lora summary. On the project's device machine (10 min per command) split it:
#   bash ci/gpu_flashinfer.sh env quant summary      then   ... kernels summary   then   ... lora audit summary
# Full results land in $OUT; short tables print last.
set -uo pipefail
OUT=${OUT:-moecheck-report/gpu-flashinfer}; mkdir -p "$OUT"
[ -f .device/setup.sh ] && source .device/setup.sh 2>/dev/null
source "$(dirname "$0")/gpu_env.sh"
export FLASHINFER_DISABLE_VERSION_CHECK=1
MC="python3 -m moecheck.ci.cli"
PT="python3 -m pytest -p no:cacheprovider -p no:xdist -v -rA --tb=line"  # -v: outcomes survive a timeout kill
EX=${FI_EXAMPLES:-8}
BACKENDS_QUICK="flashinfer_lora_bgmv flashinfer_cute_dsl_sm90_bf16"
BACKENDS_CUTLASS="flashinfer_cutlass_bf16 flashinfer_cutlass_fp8_tensor flashinfer_cutlass_fp8_block flashinfer_cutlass_mxfp4_bf16 flashinfer_cutlass_mxfp8_mxfp4 flashinfer_trtllm_bf16 flashinfer_trtllm_fp8_block flashinfer_trtllm_fp8_tensor"
PHASES=${*:-env quant kernels lora summary}

suite() {  # suite NAME TIMEOUT BACKEND...: the property suite for those backends, small example counts
  local name=$1 t=$2; shift 2
  local sel=(); for b in "$@"; do sel+=(--backend "$b"); done
  MOECHECK_PROFILE=gpu MOECHECK_MAX_EXAMPLES=$EX timeout "$t" $MC run -n 0 --report "$OUT/$name" "${sel[@]}" \
    > "$OUT/$name.log" 2>&1
  echo "$name rc=$?"
}

for phase in $PHASES; do
  echo "== phase $phase ($(date -u +%H:%M:%S))"
  case $phase in
    env)
      nvidia-smi -L
      timeout 120 python3 -c "import torch, flashinfer; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'flashinfer', flashinfer.__version__)" 2>&1 | tail -n 3
      timeout 120 $MC backends -v > "$OUT/backends.txt" 2>&1; grep '^flashinfer_' "$OUT/backends.txt" ;;
    quant)
      timeout ${QUANT_S:-480} $PT tests/backends/test_flashinfer_quant.py --junitxml "$OUT/quant.xml" \
        > "$OUT/quant.log" 2>&1; echo "quant rc=$?" ;;
    kernels)
      timeout ${KERNELS_S:-480} $PT tests/backends/test_flashinfer_kernels.py --junitxml "$OUT/kernels.xml" \
        > "$OUT/kernels.log" 2>&1; echo "kernels rc=$?" ;;
    lora) suite lora ${LORA_S:-360} flashinfer_lora_bgmv ;;
    cute) suite cute ${CUTE_S:-420} flashinfer_cute_dsl_sm90_bf16 ;;
    cutlass)
      for b in $BACKENDS_CUTLASS; do
        why=$(timeout 120 $MC backends | awk -v b="$b" '$1 == b {print $2}')
        if [ "$why" != "available" ]; then echo "$b: $(grep "^$b " "$OUT/backends.txt" 2>/dev/null | cut -c28-90)"; continue; fi
        suite "$b" ${CUTLASS_S:-540} "$b"
      done ;;
    audit)
      for b in $BACKENDS_QUICK $BACKENDS_CUTLASS; do
        timeout ${AUDIT_S:-150} $MC audit --backend "$b" >> "$OUT/audit.txt" 2>&1; echo "audit $b rc=$?"
      done ;;
    summary)
      for f in quant kernels; do
        if [ ! -f "$OUT/$f.xml" ] && [ -f "$OUT/$f.log" ]; then  # killed before the XML: count the -v lines
          echo "== $f (no junit XML: timed out?) $(grep -cE ' PASSED' "$OUT/$f.log") passed, $(grep -cE ' SKIPPED' "$OUT/$f.log") skipped, $(grep -cE ' FAILED' "$OUT/$f.log") failed"
          grep -E '^FAILED' "$OUT/$f.log" | cut -c1-220 | head -n 20
        fi
        [ -f "$OUT/$f.xml" ] || continue
        echo "== $f (pass = correct, skip 'refused' = clear error, FAIL = silently wrong)"
        python3 - "$OUT/$f.xml" <<'PY'
import re, sys, collections, xml.etree.ElementTree as ET
rows = collections.OrderedDict()
for tc in ET.parse(sys.argv[1]).iter("testcase"):
    fn = re.sub(r"\[.*", "", tc.get("name"))
    r = rows.setdefault(fn, {"pass": 0, "FAIL": 0, "skip": 0, "first": ""})
    bad = tc.find("failure") if tc.find("failure") is not None else tc.find("error")
    sk = tc.find("skipped")
    kind = "FAIL" if bad is not None else "skip" if sk is not None else "pass"
    r[kind] += 1
    node = bad if bad is not None else sk
    if node is not None and not r["first"]:
        r["first"] = f"{tc.get('name')}: " + (node.get("message") or "").splitlines()[0][:150] if node.get("message") else tc.get("name")
for fn, r in rows.items():
    print(f"{fn:52s} pass {r['pass']:3d}  FAIL {r['FAIL']:3d}  skip {r['skip']:3d}  {r['first']}")
PY
      done
      for d in lora cute $BACKENDS_CUTLASS; do [ -f "$OUT/$d/results.jsonl" ] && { echo "== suite $d"; $MC report "$OUT/$d"; }; done
      [ -f "$OUT/audit.txt" ] && { echo "== audit"; grep -v "^backend " "$OUT/audit.txt" | tail -n 40; } ;;
    *) echo "unknown phase $phase" ;;
  esac
done
tar czf "$OUT/cases.tgz" -C "$OUT" $(cd "$OUT" && ls -d */cases 2>/dev/null) 2>/dev/null
exit 0
