#!/usr/bin/env bash
# vLLM 0.24.0 MoE kernels on one GPU (issue #7): backend x format x property tables, the capability audit,
# and per backend verified / failing (case files) / not runnable here with the requirement. From the repo
# root on the GPU machine, after the vLLM bundle has been staged (shared/device/README.md, "vLLM 0.24.0":
# three consecutive runs staging vllm part00 + vdeps part00, then vllm part01, then vllm part02):
#
#   OUT=/tmp/out bash ci/gpu_vllm.sh [PHASE...]
#
# Phases (one device command is capped at 10 minutes: run a few per command; each suite process pays the
# ~20 s fused-MoE import once, so suites run in one process, -n 0):
#   env      nvidia-smi, torch/triton/vllm versions, `moecheck backends -v` (availability + reasons)
#   ran      kernel_ran on every vLLM backend, 2 examples each: the cheap does-it-launch pass, first
#   triton   vllm_triton_{bf16,fp8_*,int8_w8a8} (fused_experts and the quantized paths it dispatches to)
#   wna16    vllm_triton_int4_w4a16, vllm_triton_int8_w8a16 (fused_moe_kernel_gptq_awq has N, K as constexpr:
#            one Triton compile per shape, so keep VLLM_EXAMPLES small here)
#   modular  vllm_modular_* (FusedMoEKernel: prepare/finalize + TritonExperts / OCP MX emulation)
#   cutlass  vllm_cutlass_* (CutlassExpertsFp8, block->per-tensor conversion; NVFP4 reports sm_100)
#   marlin   vllm_marlin_* (W4A16 GPTQ/AWQ, MXFP4, FP8 weight-only)
#   ogs      vllm_ogs_* (triton_kernels matmul_ogs MXFP4: fused, and unfused activation + moe_sum)
#   lora     vllm_lora_triton (FusedMoE-LoRA Triton kernel)
#   audit    `moecheck audit` for the audit-safe vLLM backends, one process each
#   summary  the short tables (always last)
# Default: env ran triton summary. PROPS (comma list) narrows the properties of the suite phases;
# VLLM_EXAMPLES (default 3) is the Hypothesis example count per (backend, format, property).
set -uo pipefail
OUT=${OUT:-moecheck-report/gpu-vllm}; mkdir -p "$OUT"
[ -f .device/setup.sh ] && source .device/setup.sh 2>/dev/null
source "$(dirname "$0")/gpu_env.sh"
export VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-WARNING}
MC="python3 -m moecheck.ci.cli"
EX=${VLLM_EXAMPLES:-3}
PHASES=${*:-env ran triton summary}
PROP_ARGS=(); IFS=, read -ra _props <<< "${PROPS:-}"; for p in "${_props[@]}"; do [ -n "$p" ] && PROP_ARGS+=(--property "$p"); done

suite() {  # suite NAME TIMEOUT EXAMPLES [moecheck run selection args...]
  local name=$1 t=$2 ex=$3; shift 3
  MOECHECK_PROFILE=gpu MOECHECK_MAX_EXAMPLES=$ex timeout "$t" $MC run -n 0 --report "$OUT/$name" "$@" \
    > "$OUT/$name.log" 2>&1
  echo "$name rc=$? ($(grep -c '"outcome"' "$OUT/$name/results.jsonl" 2>/dev/null || echo 0) results)"
}

for phase in $PHASES; do
  echo "== phase $phase ($(date -u +%H:%M:%S))"
  case $phase in
    env)
      nvidia-smi -L
      timeout 180 python3 -c "import torch, triton, vllm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'vllm', vllm.__version__)" 2>&1 | tail -n 3
      timeout 180 $MC backends -v > "$OUT/backends.txt" 2>&1; grep '^vllm_' "$OUT/backends.txt" ;;
    ran) suite ran ${RAN_S:-540} 2 --backend 'vllm_*' --property kernel_ran ;;
    triton) suite triton ${TRITON_S:-570} "$EX" --backend 'vllm_triton_bf16' --backend 'vllm_triton_fp8_*' \
              --backend 'vllm_triton_int8_w8a8' "${PROP_ARGS[@]}" ;;
    wna16) suite wna16 ${WNA16_S:-570} "$EX" --backend 'vllm_triton_int*_w*a16' "${PROP_ARGS[@]}" ;;
    modular) suite modular ${MODULAR_S:-570} "$EX" --backend 'vllm_modular_*' "${PROP_ARGS[@]}" ;;
    cutlass) suite cutlass ${CUTLASS_S:-570} "$EX" --backend 'vllm_cutlass_*' "${PROP_ARGS[@]}" ;;
    marlin) suite marlin ${MARLIN_S:-570} "$EX" --backend 'vllm_marlin_*' "${PROP_ARGS[@]}" ;;
    ogs) suite ogs ${OGS_S:-570} "$EX" --backend 'vllm_ogs_*' "${PROP_ARGS[@]}" ;;
    lora) suite lora ${LORA_S:-570} "$EX" --backend 'vllm_lora_*' "${PROP_ARGS[@]}" ;;
    audit)
      for b in $(timeout 180 $MC backends | awk '$1 ~ /^vllm_/ && $2 == "available" {print $1}'); do
        timeout ${AUDIT_S:-150} $MC audit --backend "$b" > "$OUT/audit-$b.txt" 2>&1
        echo "audit $b rc=$?"
      done ;;
    summary)
      [ -s "$OUT/backends.txt" ] || timeout 180 $MC backends -v > "$OUT/backends.txt" 2>&1
      echo "== not runnable here (reason)"; grep '^vllm_' "$OUT/backends.txt" | grep ' unavailable ' | cut -c1-100
      for d in ran triton wna16 modular cutlass marlin ogs lora; do
        [ -f "$OUT/$d/results.jsonl" ] || continue
        echo "== $d"; timeout 60 $MC report "$OUT/$d"
      done
      ls "$OUT"/audit-*.txt >/dev/null 2>&1 && { echo "== audit (not 'refused')"; cat "$OUT"/audit-*.txt | awk 'NR == 1 || ($0 !~ /refused/ && $1 ~ /^vllm_/)' | cut -c1-160; }
      cases=$(cd "$OUT" && ls -d */cases 2>/dev/null)
      [ -n "$cases" ] && tar czf "$OUT/cases.tgz" -C "$OUT" $cases && echo "failing cases: $OUT/cases.tgz" ;;
    *) echo "unknown phase $phase (env ran triton wna16 modular cutlass marlin ogs lora audit summary)" ;;
  esac
done
