#!/usr/bin/env bash
# Replay case files as printed repros do (`moecheck repro FILE`), one line each: exit 0 pass, 1 fail,
# 125 cannot run here, 2 bad case. A file under open/ is a finding that must still fail (exit 1).
#   REPLAY_EACH_S=150 bash ci/replay_cases.sh docs/findings/*/open/vllm_*.json
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
for f in "$@"; do
  t0=$SECONDS
  out=$(timeout "${REPLAY_EACH_S:-150}" python3 -m moecheck.ci.cli repro "$f" 2>&1); rc=$?
  echo "exit $rc  $((SECONDS - t0)) s  $f"
  [ "$rc" -ne 0 ] && echo "$out" | grep -vE "^\s*$|Warning|warn" | tail -n 3 | cut -c1-300 | sed 's/^/    /'
done
