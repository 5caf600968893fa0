#!/usr/bin/env bash
# One GPU session's checks, in phases that fit one 10-minute device command each. From the repo root on
# the GPU machine (vLLM staged first: ../shared/device/README.md, stage.sh vllm90 + vdeps):
#
#   source .device/setup.sh; OUT=/tmp/out EX=20 bash ci/gpu_session.sh PHASE...
#
# (where vLLM does not import and .device/setup.sh is there, the script sources it itself)
#
# Phases:
#   env      nvidia-smi, versions, `moecheck backends -v` (what is available, and why not)
#   one      one property of torch_grouped_mm: the layout's GPU scripts run from a checkout
#   torch    torch_grouped_mm + torch_scaled_grouped_mm, every property (gpu profile)
#   compile  torch_compile, every property (gpu profile)
#   whole    the three torch backends in one run (issue 14: EX examples per property within WHOLE_S)
#   stages   ci/stages.py (each stage's share of a CUDA example; STAGES_KERNELS=N: the top N profiler ops),
#            ci/gemm_probe.py (the reference GEMM's parts) and ci/bench.py (examples/s, GEMM ratio)
#   gemm     ci/gemm_probe.py alone (the reference GEMM's parts, split-K and variance-GEMM candidates)
#   bench    ci/bench.py alone, for the backends in BENCH_BACKENDS (default torch_*: the CPU ones are CI's)
#   triton   vllm_triton_{bf16,fp8_*,int8_w8a8}: the numerics, the edges on lines of their own
#   wna16 modular cutlass marlin ogs lora routers   the other vLLM families
#   recheck  vllm_triton_bf16, _fp8_tensor_static, vllm_modular_triton again (after a record fix)
#   epscale  ci/vllm_ep_scale.py on the open fp8_tensor EP finding
#   ogsgrid  ci/shape_grid.py over the hidden sizes matmul_ogs takes ($OGS_H x $OGS_I)
#   findings the case files under docs/findings replayed on this GPU (open/ ones must still fail)
#   power    ci/power.py on CUDA (the planted bugs' kill rates at the gpu profile's shapes)
#   replay   every failing or crashed row's printed repro command, run as printed (first $REPLAYS, 300 s
#            each, REPLAY_S (300 s) in all)
#   grid     ci/shape_grid.py over small H x I for the backends whose limits are in question (ogs, marlin,
#            fp8_block): the sizes the library takes, for the records' alignment
#   a+b+c    those phases at the same time (one GPU, several suites: each suite's WORKERS apply, and each
#            phase gets MOECHECK_GPU_SHARE / n of the GPU's memory; default share 0.95. Two sessions
#            at once: give each its own MOECHECK_GPU_SHARE, e.g. 0.6 and 0.35)
#   pack     results.tgz + summary.txt into $OUT (the device returns at most 8 files, 2 folders down)
# EX: drawn examples per test (MOECHECK_MAX_EXAMPLES); PROPS / FORMATS: comma lists of properties / formats
# (names or fnmatch patterns; default all);
# MOECHECK_NO_SHRINK=1 reports failing examples unshrunk (shrinking costs GPU minutes); WORKERS: xdist workers (default 4;
# ${PHASE}_W for one suite, e.g. MARLIN_W=2: in a+b each suite's memory share follows its workers); each suite
# phase's timeout is ${PHASE}_S (default 500 s).
set -uo pipefail
OUT=${OUT:-moecheck-report/gpu-session}; mkdir -p "$OUT"
W=${W:-/tmp/mcgpu}; mkdir -p "$W"
_root=$(cd "$(dirname "$0")/.." && pwd)
# a command that forgot `source .device/setup.sh` would skip every vLLM item as unavailable; find_spec: no
# 20 s vLLM import. The lock: two sessions started at once must not unpack the same bundle together.
if [ -f "$_root/.device/setup.sh" ] && ! python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec("vllm") is None)' 2>/dev/null; then
  pushd "$_root" > /dev/null
  if command -v flock > /dev/null; then { flock 9; source .device/setup.sh; } 9> "${TMPDIR:-/tmp}/moecheck-setup.lock" 2>/dev/null
  else source .device/setup.sh 2>/dev/null; fi
  popd > /dev/null
fi
source "$(dirname "$0")/gpu_env.sh"
export VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-WARNING} FLASHINFER_DISABLE_VERSION_CHECK=1
MC="python3 -m moecheck.ci.cli"
EX=${EX:-20}
WORKERS=${WORKERS:-4}

suite() {  # suite NAME [moecheck run selection args...]
  local name=$1; shift
  local t_var="${name^^}_S"; local t=${!t_var:-500}
  local sel=() v vs  # PROPS=a,b / FORMATS=x,y narrow the selection; read, not a loop over $X: patterns are not globbed
  IFS=, read -ra vs <<< "${PROPS:-}"; for v in "${vs[@]}"; do [ -n "$v" ] && sel+=(--property "$v"); done
  IFS=, read -ra vs <<< "${FORMATS:-}"; for v in "${vs[@]}"; do [ -n "$v" ] && sel+=(--format "$v"); done
  local w_var="${name^^}_W"; local w=${!w_var:-$WORKERS}  # MARLIN_W=2: that suite's workers
  MOECHECK_PROFILE=gpu MOECHECK_MAX_EXAMPLES=$EX timeout "$t" $MC run -n "$w" --timeout 240 \
    --report "$W/$name" "$@" "${sel[@]}" > "$W/$name.log" 2>&1
  echo "$name rc=$? ($(grep -c '"outcome"' "$W/$name/results.jsonl" 2>/dev/null || echo 0) results, $(date -u +%H:%M:%S))"
}

grid() {  # grid BACKEND FORMAT HIDDEN INTER [extra args]
  local b=$1 f=$2 h=$3 i=$4; shift 4
  # 400 s: the grid phase's 32 ogs cells are a Triton compile each (R3: 6 cells in under 120 s), and
  # every restart after a device error pays the vLLM import again (~20 s)
  timeout ${GRID_S:-400} python3 -m moecheck.ci.shape_grid --backend "$b" --format "$f" --hidden "$h" --inter "$i" "$@" \
    >> "$W/grid.txt" 2>&1; echo "grid $b $f rc=$?"
}

bench() {  # examples/s of the GPU backends (BENCH_BACKENDS, fnmatch, comma list); rows print as they are measured
  local pats bs=(); IFS=, read -ra pats <<< "${BENCH_BACKENDS:-torch_*}"  # read: no glob expansion
  for b in "${pats[@]}"; do bs+=(--backend "$b"); done
  timeout ${BENCH_S:-240} python3 -W ignore -m moecheck.ci.bench --examples ${BENCH_EX:-10} "${bs[@]}" --out "$W/bench.json" \
    > "$W/bench.txt" 2>&1; echo "bench rc=$?"
}

one_phase() {
  local phase=$1
  echo "== phase $phase ($(date -u +%H:%M:%S))"
  case $phase in
    env)
      nvidia-smi -L
      timeout 120 python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
      timeout 120 python3 -c "import vllm; print('vllm', vllm.__version__)" 2>&1 | tail -n 1
      timeout 180 $MC backends -v > "$W/backends.txt" 2>&1; echo "backends rc=$?"
      grep -E '^(torch|vllm|cpu)' "$W/backends.txt" | cut -c1-120 ;;
    one) suite one --backend torch_grouped_mm --format bf16 --property matches_reference ;;
    torch) suite torch --backend torch_grouped_mm --backend torch_scaled_grouped_mm ;;
    compile) suite compile --backend torch_compile ;;
    whole)  # issue 14's goal: the gpu profile over the three torch backends, EX examples per property, within WHOLE_S
      local t0=$SECONDS
      suite whole --backend torch_grouped_mm --backend torch_scaled_grouped_mm --backend torch_compile
      echo "whole: $((SECONDS - t0)) s wall"
      python3 - "$W/whole/results.jsonl" <<'EOF2'
import collections, json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = collections.Counter(r["outcome"] for r in rows)
ex = [r.get("examples_run") or 0 for r in rows if r["property"] != "edge_contract" and r["outcome"] in ("passed", "failed")]
print(f"whole: {len(rows)} results {dict(by)}; examples {sum(ex)}; per numerics test min {min(ex, default=0)} "
      f"median {sorted(ex)[len(ex) // 2] if ex else 0}")
EOF2
      ;;
    stages)  # where a CUDA example's time goes (ci/stages.py), then examples/s and the GEMM ratio (ci/bench.py)
      [ -n "${STAGES_GEN1:-}" ] && { timeout ${STAGES_S:-240} python3 -W ignore -m moecheck.ci.stages --backend torch_grouped_mm \
        --examples ${STAGES_EX:-20} --gen 1 > "$W/stages-gen1.txt" 2>&1; echo "stages --gen 1 rc=$?"; }  # the cases built on the host
      timeout ${STAGES_S:-240} python3 -W ignore -m moecheck.ci.stages --backend torch_grouped_mm \
        --backend torch_scaled_grouped_mm --examples ${STAGES_EX:-20} --kernels ${STAGES_KERNELS:-0} \
        --out "$W/stages.json" > "$W/stages.txt" 2>&1
      echo "stages rc=$?"
      timeout ${GEMM_S:-120} python3 -W ignore -m moecheck.ci.gemm_probe > "$W/gemm.txt" 2>&1; echo "gemm_probe rc=$?"
      bench ;;
    bench) bench ;;
    gemm) timeout ${GEMM_S:-120} python3 -W ignore -m moecheck.ci.gemm_probe > "$W/gemm.txt" 2>&1; echo "gemm_probe rc=$?" ;;
    triton) suite triton --backend vllm_triton_bf16 --backend 'vllm_triton_fp8_*' --backend vllm_triton_int8_w8a8 ;;
    wna16) suite wna16 --backend 'vllm_triton_int*_w*a16' ;;
    modular) suite modular --backend 'vllm_modular_*' ;;
    cutlass) suite cutlass --backend 'vllm_cutlass_*' ;;
    marlin) suite marlin --backend 'vllm_marlin_*' ;;
    ogs) suite ogs --backend 'vllm_ogs_*' ;;
    lora) suite lora --backend 'vllm_lora_*' ;;
    routers)  # its own selection: routes_like_reference is the only property of router backends (checks.py),
      # so PROPS' MoE properties selected nothing (R2: 0 results)
      PROPS=routes_like_reference FORMATS='' suite routers --backend vllm_fused_topk --backend vllm_grouped_topk ;;
    recheck) suite recheck --backend vllm_triton_bf16 --backend vllm_triton_fp8_tensor_static --backend vllm_modular_triton ;;
    epscale)  # does fused_experts' output depend on memory it never wrote? (docs/findings/h200-2026-12-02)
      for f in docs/findings/h200-2026-12-02/open/vllm_triton_fp8_tensor-*.json; do
        timeout ${EPSCALE_S:-200} python3 -m moecheck.ci.vllm_ep_scale "$f" >> "$W/epscale.txt" 2>&1; echo "epscale $(basename "$f") rc=$?" | tee -a "$W/epscale.txt"
      done ;;
    ogsgrid)
      grid vllm_ogs_mxfp4 mxfp4_bf16 ${OGS_H:-64,128,192,224,256,2880} ${OGS_I:-128} --tokens 7 --activation swigluoai
      sort -u "$W/grid.txt" | grep -v '^$' | cut -c1-220 ;;
    grid)
      grid vllm_ogs_mxfp4 mxfp4_bf16 64,128,256,512 64,128,256,512 --tokens 1,33 --activation swigluoai &
      # g64, not g128: moecheck refuses I=64 for int4_*_g128 (the group must divide I)
      grid vllm_marlin_int4_gptq int4_w_g64 128,256,512 64,128,256 --tokens 1,33 &
      grid vllm_marlin_int4_awq int4_zp_w_g64 128,256,512 64,128,256 --tokens 1,33 &
      grid vllm_marlin_fp8 fp8_w_channel 128,256,512 64,128,256 --tokens 1,33 &
      grid vllm_marlin_mxfp4 mxfp4_bf16 128,256,512 64,128,256 --tokens 1,33 &
      grid vllm_triton_fp8_block fp8_block 64,96,128,256 128,256 --tokens 1,33 &
      wait; sort -u "$W/grid.txt" | grep -v '^$' | cut -c1-220 ;;
    findings)
      # default from the number of case files: R3 took 177 s for 33 items at -n 4 (~21 worker-s each);
      # 30 worker-s a case leaves room for the torch_compile cases' Inductor compiles
      local nf fn=${FINDINGS_N:-4}; nf=$(ls docs/findings/*/*.json docs/findings/*/open/*.json 2>/dev/null | wc -l)
      local ft=${FINDINGS_S:-$((60 + 30 * nf / (fn > 0 ? fn : 1)))}; echo "findings: $nf case files, -n $fn, timeout $ft s"
      timeout "$ft" python3 -m pytest -p no:cacheprovider -n "$fn" -q -rA tests/backends/test_findings.py \
        > "$W/findings.log" 2>&1; echo "findings rc=$?"; grep -cE '^PASSED' "$W/findings.log" ;;
    power)
      timeout ${POWER_S:-300} python3 -m moecheck.ci.power --device cuda --examples ${POWER_EX:-40} --out "$W/power.json" \
        > "$W/power.txt" 2>&1; echo "power rc=$?" ;;
    replay)
      : > "$W/replays.txt"
      python3 - "$W" "${REPLAYS:-12}" <<'EOF' > "$W/replay_cmds.txt"
import json, pathlib, sys
w, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
seen = 0
for f in sorted(w.glob("*/results.jsonl")):
    for line in f.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("outcome") in ("failed", "crashed") and r.get("repro", "").startswith("moecheck repro") and seen < n:
            seen += 1
            print(f"{r['backend']}\t{r['property']}\t{r['repro']}")
EOF
      local t_end=$((SECONDS + ${REPLAY_S:-300})) left  # the whole phase, so it cannot outlast the command
      while IFS=$'\t' read -r b p cmd; do
        left=$((t_end - SECONDS))
        if ((left <= 0)); then echo -e "$b\t$p\tnot run (REPLAY_S spent)" >> "$W/replays.txt"; continue; fi
        timeout $((left < 300 ? left : 300)) bash -c "$cmd" < /dev/null > /dev/null 2>&1  # as printed; stdin is the list
        echo -e "$b\t$p\texit $?" >> "$W/replays.txt"
      done < "$W/replay_cmds.txt"
      cat "$W/replays.txt" ;;
    pack)
      {
        for d in one torch compile whole triton recheck wna16 modular cutlass marlin ogs lora routers; do
          [ -f "$W/$d/results.jsonl" ] || continue
          echo "== $d"; timeout 60 $MC report "$W/$d" --by-property 2>&1 | cut -c1-400
        done
        [ -f "$W/power.txt" ] && { echo "== power (cuda)"; cat "$W/power.txt"; }
        [ -f "$W/stages-gen1.txt" ] && { echo "== stages (cuda, cases built on the host)"; grep " ex/s" "$W/stages-gen1.txt" | cut -c1-220; }
        [ -f "$W/stages.txt" ] && { echo "== stages (cuda)"; grep " ex/s" "$W/stages.txt" | cut -c1-220; }
        [ -f "$W/gemm.txt" ] && { echo "== gemm_probe"; grep -E " ms |ulps|vs float64" "$W/gemm.txt"; }
        [ -f "$W/bench.txt" ] && { echo "== bench"; cat "$W/bench.txt"; }
        [ -f "$W/epscale.txt" ] && { echo "== epscale"; cat "$W/epscale.txt"; }
        [ -f "$W/replays.txt" ] && { echo "== replays"; cat "$W/replays.txt"; }
        [ -f "$W/findings.log" ] && { echo "== findings"; tail -n 30 "$W/findings.log"; }
        [ -f "$W/grid.txt" ] && { echo "== grid"; sort -u "$W/grid.txt" | cut -c1-220; }
      } > "$OUT/summary.txt" 2>&1
      tar czf "$OUT/results.tgz" -C "$W" . 2>/dev/null
      cp "$W/backends.txt" "$OUT/" 2>/dev/null
      ls -la "$OUT" ;;
    *) echo "unknown phase $phase" ;;
  esac
}

for phase in "$@"; do
  if [[ $phase == *+* ]]; then  # a+b+c: concurrent phases, their output after all end
    # each suite caps its workers at its slice of this session's GPU share, not at the whole GPU
    # in proportion to its workers (${P}_W, else WORKERS), so every worker gets the same memory
    IFS=+ read -ra ps <<< "$phase"
    tw=0; for p in "${ps[@]}"; do wv="${p^^}_W"; tw=$((tw + ${!wv:-$WORKERS})); done
    for p in "${ps[@]}"; do
      wv="${p^^}_W"
      share=$(awk -v s="${MOECHECK_GPU_SHARE:-0.95}" -v w=${!wv:-$WORKERS} -v t=$tw 'BEGIN { printf "%.4f", s * w / t }')
      echo "phase $p: GPU share $share" > "$W/phase-$p.out"
      MOECHECK_GPU_SHARE=$share one_phase "$p" >> "$W/phase-$p.out" 2>&1 &
    done; wait
    for p in ${phase//+/ }; do cat "$W/phase-$p.out"; done
  else
    one_phase "$phase"
  fi
done
