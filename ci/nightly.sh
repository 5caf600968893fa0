#!/usr/bin/env bash
# Nightly moecheck on a GPU runner: property suite, then the benchmark (into the same run), then e2e
# gates, then the dashboard. The dashboard is written even when tests fail; the script exits with the
# tests' status (a benchmark failure is logged and changes nothing: it is a timing, not a test).
# Setup, cron/systemd examples and bisecting: docs/nightly.md.
#
# Environment (all optional):
#   MOECHECK_STORE       results store        (default ~/.cache/moecheck/results.sqlite)
#   MOECHECK_EXAMPLE_DB  Hypothesis database  (default ~/.cache/moecheck/hypothesis); persistent, so
#                        failures found on earlier nights are replayed first
#   MOECHECK_DASHBOARD   HTML output          (default: dashboard.html next to the store)
#   MOECHECK_BIN         how to call moecheck (default: moecheck; e.g. "python -m moecheck")
#   MOECHECK_E2E_ARGS    extra arguments for `moecheck e2e`
# Extra arguments to this script go to `moecheck run`.
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/moecheck"
export MOECHECK_STORE="${MOECHECK_STORE:-$cache/results.sqlite}"
export MOECHECK_EXAMPLE_DB="${MOECHECK_EXAMPLE_DB:-$cache/hypothesis}"
dashboard="${MOECHECK_DASHBOARD:-$(dirname "$MOECHECK_STORE")/dashboard.html}"
read -r -a moecheck <<< "${MOECHECK_BIN:-moecheck}"
read -r -a e2e_args <<< "${MOECHECK_E2E_ARGS:-}"
mkdir -p "$(dirname "$MOECHECK_STORE")" "$MOECHECK_EXAMPLE_DB" "$(dirname "$dashboard")"

log() { echo "nightly: $*" >&2; }

# a 2000-example night can outlast the timer period: never run two at once on one store
if command -v flock > /dev/null; then
    exec 9> "$MOECHECK_STORE.nightly.lock"
    if ! flock -n 9; then
        log "another nightly run holds $MOECHECK_STORE.nightly.lock; not starting"
        exit 0
    fi
fi

status=0
# `|| status=$?` keeps set -e from stopping before the dashboard
MOECHECK_PROFILE=nightly "${moecheck[@]}" run --store "$MOECHECK_STORE" "$@" || status=$?
log "property suite exited $status"

# right after the suite, so the newest run in the store is this night's and the numbers join it
if "${moecheck[@]}" bench --help > /dev/null 2>&1; then
    bench_status=0
    "${moecheck[@]}" bench --store "$MOECHECK_STORE" --out "$(dirname "$MOECHECK_STORE")/bench.json" || bench_status=$?
    log "benchmark exited $bench_status; test status unchanged"
else
    log "skipping benchmark: this moecheck has no 'bench' command"
fi

if "${moecheck[@]}" e2e --help > /dev/null 2>&1; then
    e2e_status=0
    "${moecheck[@]}" e2e ${e2e_args[@]+"${e2e_args[@]}"} || e2e_status=$?
    log "e2e gates exited $e2e_status"
    if [ "$status" -eq 0 ]; then status=$e2e_status; fi
else
    log "skipping e2e gates: this moecheck has no 'e2e' command"
fi

if "${moecheck[@]}" dashboard --store "$MOECHECK_STORE" --out "$dashboard"; then
    log "dashboard: $dashboard"
else
    log "dashboard failed (exit $?); test status unchanged"
fi
exit "$status"
