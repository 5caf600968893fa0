#!/usr/bin/env bash
# The third H200 command of 2026-12-02: the open fp8_tensor EP finding probed with the allocator's both
# pools flooded (ci/vllm_ep_scale.py), and vllm_grouped_topk's DeepSeek-V3 routing with one and two
# experts per group. From the repo root on the GPU machine, vLLM staged: OUT=dir bash ci/gpu_probe_0212.sh
set -uo pipefail
OUT=${OUT:-moecheck-report/probe}; mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"
export VLLM_LOGGING_LEVEL=ERROR
(for f in docs/findings/h200-2026-12-02/open/vllm_triton_fp8_tensor-*.json; do
   echo "== $(basename "$f")"; timeout 150 python3 -m moecheck.ci.vllm_ep_scale "$f"; echo "rc=$?"
 done) > "$OUT/epscale.txt" 2>&1 &
(for eg in "4 4" "8 4" "16 4" "256 8"; do set -- $eg
   c="{\"activation\": \"silu\", \"backend\": \"vllm_grouped_topk\", \"bias\": false, \"dtype\": \"bfloat16\", \"ep_remote\": 0, \"experts\": $1, \"format\": \"bf16\", \"hidden\": 1, \"inter\": 1, \"lora_adapters\": 0, \"lora_rank\": 1, \"n_group\": $2, \"property\": \"routes_like_reference\", \"renormalize\": false, \"routed_scaling\": 1.0, \"router\": \"deepseek_v3\", \"router_logits\": \"negative\", \"routing\": \"softmax\", \"seed\": 0, \"tokens\": 64, \"top_k\": 1, \"topk_group\": 1, \"values\": \"normal\", \"weights_on_input\": false}"
   echo "== E=$1 n_group=$2"; timeout 120 moecheck repro --case "$c" 2>&1 | head -n 3 | cut -c1-400; echo "rc=${PIPESTATUS[0]}"
 done) > "$OUT/router.txt" 2>&1 &
wait
cat "$OUT/epscale.txt" "$OUT/router.txt" | grep -v "^WARNING" | cut -c1-300
