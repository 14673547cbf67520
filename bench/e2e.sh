#!/usr/bin/env bash
# e2e.sh — end-to-end relay throughput, Palisade vs Postfix in the same run, alternating cell by cell.
#
#   postfix   Postfix 3.7 (shared/bench-ref/postfix.sh: durable queue, relayhost = the sink, destination
#             concurrency 100)
#   palisade  Palisade: durable queue, [transport] "*" = the sink, [delivery] concurrency = 100,
#             initial_concurrency = 20, max_sessions = 500, max_sessions_per_ip = 0, log level info (a line
#             per connection, message and delivery, as Postfix's maillog)
#
# Both relay every message to the same Postfix smtp-sink. Load: Postfix's smtp-source, one message per
# connection, through shared/bench-ref/lib.sh run_one with E2E=1: msgs/s from the first injection until the
# sink has counted every message, CPU of the MTA's whole process tree per message (injection and delivery),
# peak PSS of the tree. Both MTAs are started once and run the whole benchmark, as they would in service.
# Every cell starts with both queues empty (drained; Postfix's is purged of anything left), then both get
# WARMUP messages of the cell's size, delivered before the cell starts. PAL_RESTART=1 restarts Palisade on
# an empty data dir before every cell instead (what this script did before 2026-11-28 18:40): the cell then
# measures code the JIT is still compiling (bench/RESULTS.md: 2.0-2.1 against 1.6-1.7 ms of CPU per message
# at one session), while Postfix's processes run on.
#
# Usage: bench/e2e.sh               (from anywhere; results under bench/results/e2e-<UTC time>/)
# Env:   BENCH_REF=DIR              reference harness (default: ../shared/bench-ref from the repo root)
#        CONCS="1 10 50" SIZES="4096 102400" REPEAT=3
#        COUNT_<conc>_<size>=N      messages per cell (defaults below), e.g. COUNT_50_4096=3000
#        WARMUP=200                 messages of the cell's size through each MTA before each cell (delivered first)
#        PAL_RESTART=0              1 = restart Palisade on an empty data dir before every cell
#        E2E_TIMEOUT=120            seconds run_one waits for the sink to count a cell's messages
#        PF_PORT=2745 PAL_PORT=2746 SINK=2747 (loopback ports; must be free)
#        BENCH_RESULTS=DIR  BENCH_TMP=DIR (removed at exit unless KEEP_TMP=1)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_REF="${BENCH_REF:-$REPO/../shared/bench-ref}"
[ -f "$BENCH_REF/lib.sh" ] || { echo "e2e.sh: $BENCH_REF/lib.sh not found (set BENCH_REF)" >&2; exit 2; }
BENCH_REF="$(cd "$BENCH_REF" && pwd)"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
export BENCH_RESULTS="${BENCH_RESULTS:-$REPO/bench/results/e2e-$STAMP}"
export BENCH_TMP="${BENCH_TMP:-/tmp/palisade-bench-e2e.$$}"
export E2E_TIMEOUT="${E2E_TIMEOUT:-120}"
. "$BENCH_REF/lib.sh"

PF_PORT="${PF_PORT:-2745}"; PAL_PORT="${PAL_PORT:-2746}"; SINK="${SINK:-2747}"
CONCS="${CONCS:-1 10 50}"; SIZES="${SIZES:-4096 102400}"; REPEAT="${REPEAT:-3}"; WARMUP="${WARMUP:-200}"
PFDIR="${PFDIR:-$BENCH_TMP/postfix}"
PALDIR="$BENCH_TMP/palisade"
BENCH_NAME=e2e
PF_HOLD=0
PAL_MAX_SESSIONS=500
PAL_LOG_LEVEL=info
PAL_TOML_EXTRA='
[delivery]
concurrency = 100
initial_concurrency = 20'
. "$REPO/bench/lib-palisade.sh"

default_count() {   # conc size -> messages per cell (bounded: a full run takes ~4 min on 2 vCPUs)
  case "$2:$1" in
    4096:1) echo 1000;; 4096:*) echo 3000;;
    *:1) echo 500;; *) echo 1500;;
  esac
}

cleanup() {
  pal_stop
  pf_stop
  sink_stop "$SINK"
  pal_save_log
  [ "${KEEP_TMP:-0}" = 1 ] || rm -rf "$BENCH_TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Both queues empty (messages still queued are named in the log, then removed) and the sink quiet.
pf_empty() { [ "$(pf_queued)" = 0 ]; }
sink_quiet() {   # the sink's count did not move for 0.5 s
  local a; a=$(sink_count "$SINK"); sleep 0.5; [ "$(sink_count "$SINK")" = "$a" ]
}
prep_postfix() {
  wait_until 60 pf_empty || log "postfix queue still holds $(pf_queued) message(s) after 60 s; purging"
  pf_purge
  warm "$PF_PORT" "$size"
  wait_until 60 pf_empty || { log "postfix warm-up not delivered in 60 s ($(pf_queued) queued); purging"; pf_purge; }
  wait_until 10 sink_quiet
  sleep 1
}
prep_palisade() {
  if [ "${PAL_RESTART:-0}" = 1 ]; then pal_clean_start
  elif ! kill -0 "$PAL_PID" 2>/dev/null; then log "palisade is not running; starting it again on an empty data dir"; pal_clean_start
  elif ! wait_until 60 pal_empty; then
    # Left over, they would reach the sink during a later cell and count toward it: start clean instead.
    log "palisade queue still holds $(pal_queued) message(s) after 60 s; starting it again on an empty data dir"
    pal_clean_start
  fi
  warm "$PAL_PORT" "$size"
  wait_until 60 pal_empty || log "palisade warm-up not delivered in 60 s ($(pal_queued) queued)"
  wait_until 10 sink_quiet
  sleep 1
}

# ---- main ----------------------------------------------------------------------------
for p in "$PF_PORT" "$PAL_PORT" "$SINK"; do port_free "$p" || die "port $p is in use (set PF_PORT/PAL_PORT/SINK)"; done
[ -x "$SMTP_SOURCE" ] || die "smtp-source not found (Debian package postfix)"
command -v /usr/bin/time >/dev/null || die "/usr/bin/time not found (Debian package time)"
mkdir -p "$BENCH_RESULTS" "$PALDIR"
log "results in $BENCH_RESULTS; reference harness $BENCH_REF"
log "machine at start: $(machine_line)"

sink_start "$SINK" || die "smtp-sink did not start"
pf_start
pal_config
[ "${PAL_RESTART:-0}" = 1 ] || { rm -rf "$PALDIR/var"; pal_start; }

for rep in $(seq "$REPEAT"); do
  for size in $SIZES; do for conc in $CONCS; do
    v="COUNT_${conc}_${size}"; count="${!v:-$(default_count "$conc" "$size")}"
    # Alternate which MTA goes first so neither always runs on a machine the other just heated.
    if [ $((rep % 2)) = 1 ]; then order="postfix palisade"; else order="palisade postfix"; fi
    for mta in $order; do
      if [ "$mta" = postfix ]; then
        prep_postfix
        log "round $rep: postfix c=$conc size=$size count=$count (sink at $(sink_count "$SINK"))"
        run_one postfix "$PF_PORT" "$SINK" "$conc" "$size" "$count" "$(pf_master)" 1
        log "  postfix queued after: $(pf_queued), deferred: $(find "$PFDIR/spool/deferred" -type f 2>/dev/null | wc -l)"
      else
        prep_palisade
        log "round $rep: palisade c=$conc size=$size count=$count (sink at $(sink_count "$SINK"))"
        run_one palisade "$PAL_PORT" "$SINK" "$conc" "$size" "$count" "$PAL_PID" 1
        log "  palisade queued after: $(pal_queued), deferred: $(find "$PALDIR/var/spool/deferred" -type f 2>/dev/null | wc -l)"
      fi
    done
  done; done
done
pal_stop
log "machine at end: $(machine_line)"
if grep -qE '"level":"(error|fatal)"' "$PALDIR/palisade.log" 2>/dev/null; then
  log "palisade logged errors:"; grep -E '"level":"(error|fatal)"' "$PALDIR/palisade.log" | head -5
fi
grep -cE 'status=(deferred|bounced)' "$PFDIR/maillog" 2>/dev/null | sed 's/^/postfix deferred|bounced log lines: /'

# ---- summary: per cell, Palisade / Postfix -------------------------------------------
SUMMARY="$BENCH_RESULTS/summary.md"
ratio_table "$BENCH_RESULTS/postfix.tsv" "$BENCH_RESULTS/palisade.tsv" 8 Postfix Palisade > "$SUMMARY"
echo
log "end to end, $REPEAT round(s) per cell; ratio = Palisade / Postfix (msgs/s: higher is better for Palisade; CPU/msg: lower is)"
cat "$SUMMARY"
