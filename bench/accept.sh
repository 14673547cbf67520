#!/usr/bin/env bash
# accept.sh — accept-only throughput, Palisade vs Postfix in the same run, alternating cell by cell.
#
#   postfix-hold     Postfix 3.7 (shared/bench-ref/postfix.sh, HOLD=1): every message fsynced into its hold queue
#   palisade-accept  Palisade: every message fsynced into incoming/; its queue manager is paused (SIGSTOP) while
#                    a cell runs, so nothing moves or delivers the messages (Palisade has no accept-and-hold knob)
#
# Load: Postfix's smtp-source, one message per connection, through shared/bench-ref/lib.sh run_one with E2E=0
# (injection rate, CPU of the MTA's whole process tree per message, peak PSS). Both MTAs start each cell with
# an empty queue: Postfix's hold queue is purged; Palisade's queue manager relays what Palisade holds to the
# sink and is paused again. Both MTAs run the whole benchmark (PAL_RESTART=1: Palisade is restarted on an
# empty data dir before every cell instead, as before 2026-11-28 18:40).
#
# Usage: bench/accept.sh            (from anywhere; results under bench/results/accept-<UTC time>/)
# Env:   BENCH_REF=DIR              reference harness (default: ../shared/bench-ref from the repo root)
#        CONCS="1 10 50" SIZES="4096 102400" REPEAT=3
#        COUNT_<conc>_<size>=N      messages per cell (defaults below), e.g. COUNT_50_4096=3000
#        WARMUP=300                 messages of the cell's size sent to each MTA right after the clean, before each cell
#                                   (JIT and process pools warm; they stay queued in both, equally); 0 = none
#        PF_PORT=2725 PAL_PORT=2726 SINK=2727 (loopback ports; must be free)
#        QMGR_PAUSE=1               0 = let Palisade's queue manager run (it relays everything to the sink)
#        PAL_RESTART=0              1 = restart Palisade on an empty data dir before every cell
#        BENCH_RESULTS=DIR  BENCH_TMP=DIR (removed at exit unless KEEP_TMP=1)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_REF="${BENCH_REF:-$REPO/../shared/bench-ref}"
[ -f "$BENCH_REF/lib.sh" ] || { echo "accept.sh: $BENCH_REF/lib.sh not found (set BENCH_REF)" >&2; exit 2; }
BENCH_REF="$(cd "$BENCH_REF" && pwd)"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
export BENCH_RESULTS="${BENCH_RESULTS:-$REPO/bench/results/accept-$STAMP}"
export BENCH_TMP="${BENCH_TMP:-/tmp/palisade-bench-accept.$$}"
# lib.sh's smtp-sink: run_one reads a sink PID (with E2E=0 no cell waits for it), and Palisade's queue manager
# relays what a cell left to it between cells.
. "$BENCH_REF/lib.sh"

PF_PORT="${PF_PORT:-2725}"; PAL_PORT="${PAL_PORT:-2726}"; SINK="${SINK:-2727}"
CONCS="${CONCS:-1 10 50}"; SIZES="${SIZES:-4096 102400}"; REPEAT="${REPEAT:-3}"; WARMUP="${WARMUP:-300}"
QMGR_PAUSE="${QMGR_PAUSE:-1}"
PFDIR="${PFDIR:-$BENCH_TMP/postfix}"
PALDIR="$BENCH_TMP/palisade"
BENCH_NAME=accept
PF_HOLD=1
. "$REPO/bench/lib-palisade.sh"
QMGR_PID=""

default_count() {   # conc size -> messages per cell (bounded so a full run takes a few minutes)
  case "$2:$1" in
    4096:1) echo 1500;; 4096:*) echo 3000;;
    *:1) echo 600;; *) echo 2000;;
  esac
}

# Accept only: freeze the queue manager so committed messages stay in incoming/, as Postfix's HOLD keeps them
# out of its active queue. Frozen, it uses no CPU; master buffers the commit notices meant for it.
# (lib-palisade.sh's pal_start / pal_stop call these hooks.)
pal_on_start() {
  [ "$QMGR_PAUSE" = 1 ] || return 0
  for _ in $(seq 20); do QMGR_PID=$(pal_children qmgr | head -1); [ -n "$QMGR_PID" ] && break; sleep 0.1; done
  if [ -z "$QMGR_PID" ]; then log "no queue manager process found; nothing to pause"; return 0; fi
  kill -STOP "$QMGR_PID"
}
pal_on_stop() { [ -n "$QMGR_PID" ] && kill -CONT "$QMGR_PID" 2>/dev/null; QMGR_PID=""; }

# An empty queue before each cell, as Postfix's hold queue is purged: the queue manager runs (relaying what
# the last cell left to the sink) until the queue is empty, then is paused again. Palisade runs on, as Postfix
# does; PAL_RESTART=1 restarts it on an empty data dir instead (the JIT then starts over every cell).
prep_palisade() {
  if [ "${PAL_RESTART:-0}" = 1 ]; then pal_clean_start; return; fi
  if ! kill -0 "$PAL_PID" 2>/dev/null; then log "palisade is not running; starting it again on an empty data dir"; pal_clean_start; return; fi
  # Master restarts a queue manager that died: resume and pause the one running now, never a stale PID.
  if [ "$QMGR_PAUSE" = 1 ]; then
    local q; q=$(pal_children qmgr | head -1)
    [ "$q" = "$QMGR_PID" ] || log "queue manager is now ${q:-missing} (was ${QMGR_PID:-none})"
    QMGR_PID=$q
  fi
  [ -n "$QMGR_PID" ] && kill -CONT "$QMGR_PID" 2>/dev/null
  if ! wait_until 120 pal_empty; then
    log "palisade queue still holds $(pal_queued) message(s) after 120 s; starting it again on an empty data dir"
    pal_clean_start; return
  fi
  [ -n "$QMGR_PID" ] && kill -STOP "$QMGR_PID"
  return 0
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

# ---- main ----------------------------------------------------------------------------
for p in "$PF_PORT" "$PAL_PORT" "$SINK"; do port_free "$p" || die "port $p is in use (set PF_PORT/PAL_PORT/SINK)"; done
[ -x "$SMTP_SOURCE" ] || die "smtp-source not found (Debian package postfix)"
command -v /usr/bin/time >/dev/null || die "/usr/bin/time not found (Debian package time)"
mkdir -p "$BENCH_RESULTS" "$PALDIR"
log "results in $BENCH_RESULTS; reference harness $BENCH_REF"
log "machine: $(machine_line)"

sink_start "$SINK" || die "smtp-sink did not start"
pf_start
pal_config
rm -rf "$PALDIR/var"
pal_start

for rep in $(seq "$REPEAT"); do
  for size in $SIZES; do for conc in $CONCS; do
    v="COUNT_${conc}_${size}"; count="${!v:-$(default_count "$conc" "$size")}"
    # Alternate which MTA goes first so neither always runs on a machine the other just heated.
    if [ $((rep % 2)) = 1 ]; then order="postfix palisade"; else order="palisade postfix"; fi
    for mta in $order; do
      if [ "$mta" = postfix ]; then
        pf_purge hold; warm "$PF_PORT" "$size"; sleep 1
        log "round $rep: postfix-hold c=$conc size=$size count=$count (held before: $(pf_held))"
        run_one postfix-hold "$PF_PORT" "$SINK" "$conc" "$size" "$count" "$(pf_master)" 0
      else
        prep_palisade; warm "$PAL_PORT" "$size"; sleep 1
        log "round $rep: palisade-accept c=$conc size=$size count=$count (queued before: $(pal_queued))"
        run_one palisade-accept "$PAL_PORT" "$SINK" "$conc" "$size" "$count" "$PAL_PID" 0
        log "  palisade queued after: $(pal_queued)"
      fi
    done
  done; done
done
pf_purge hold

# ---- summary: best of REPEAT per cell, Palisade / Postfix -------------------------
SUMMARY="$BENCH_RESULTS/summary.md"
awk -F'\t' '
  FNR == 1 { next }
  { k = $2 FS $3; n[$1 FS k]++; cells[k] = 1
    r = $6 + 0; c = ($10 == "NA" ? -1 : 1000 * $10 / $4)
    if (!(($1 FS k) in best) || r > best[$1 FS k]) best[$1 FS k] = r
    if (c >= 0 && (!(($1 FS k) in cpu) || c < cpu[$1 FS k])) cpu[$1 FS k] = c
    if ($14 != 0) bad[$1 FS k]++ }
  END {
    print "| size | sessions | Postfix hold msgs/s | Palisade msgs/s | ratio msgs/s | Postfix CPU ms/msg | Palisade CPU ms/msg | ratio CPU/msg | runs |"
    print "|---|---|---|---|---|---|---|---|---|"
    m = 0; for (k in cells) keys[++m] = k
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) {
      split(keys[i], a, FS); split(keys[j], b, FS)
      if (a[2] + 0 > b[2] + 0 || (a[2] == b[2] && a[1] + 0 > b[1] + 0)) { t = keys[i]; keys[i] = keys[j]; keys[j] = t }
    }
    for (i = 1; i <= m; i++) {
      k = keys[i]; split(k, a, FS); P = "palisade-accept" FS k; F = "postfix-hold" FS k
      printf "| %s KB | %s | %.0f | %.0f | %s | %.2f | %.2f | %s | %d+%d%s |\n", a[2] / 1024, a[1], best[F], best[P],
        (best[F] > 0 ? sprintf("%.2f", best[P] / best[F]) : "NA"), cpu[F], cpu[P],
        (cpu[F] > 0 ? sprintf("%.2f", cpu[P] / cpu[F]) : "NA"), n[F], n[P],
        ((bad[F] + bad[P]) > 0 ? " (smtp-source errors!)" : "")
    }
  }' "$BENCH_RESULTS/postfix-hold.tsv" "$BENCH_RESULTS/palisade-accept.tsv" > "$SUMMARY"
echo
log "best of $REPEAT per cell; ratio = Palisade / Postfix (msgs/s: higher is better for Palisade; CPU/msg: lower is)"
cat "$SUMMARY"
