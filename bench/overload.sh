#!/usr/bin/env bash
# overload.sh — Palisade past its session limit: [smtp] max_sessions = 20 under 5x as many concurrent clients.
#
# Palisade relays everything to a Postfix smtp-sink ([delivery] concurrency = 100, initial_concurrency = 20,
# max_sessions_per_ip = 0, log level warn). Phases, one Palisade instance throughout (memory carries over):
#   1. source-10   smtp-source -s 10 (lib.sh run_one, end to end): the unloaded rate with Postfix's tool
#   2. unloaded    bench/smtp-load.ts, CLIENTS_UNLOADED (10) clients for DURATION s: the unloaded rate with the
#                  same client as the overload phase (the fraction below is taken against this one)
#   3. at-limit    CLIENTS_LIMIT (20) clients = max_sessions: the most the limit lets through
#   4. overload    CLIENTS_OVER (100) clients for DURATION s: each connects, and on 220 sends PER_SESSION
#                  messages and quits; on 421 (max_sessions) closes and tries again after BACKOFF ms
# smtp-source cannot be the overload load: it exits at the first 421 greeting. During phases 2-4 the VmRSS of
# master, qmgr, the smtpd workers, cleanup and the delivery agents is sampled every RSS_EVERY s from /proc.
# Before each phase the queue has drained. Per phase: connections, greetings 220 / 421 / other, messages
# acknowledged (250 after DATA), msgs/s, the most sessions the clients held at once (220 .. 221), reply
# latency, CPU of Palisade's tree and of the client, peak RSS per role.
#
# Usage: bench/overload.sh          (results under bench/results/overload-<UTC time>/; ~2 min)
# Env:   DURATION=30  CLIENTS_UNLOADED=10  CLIENTS_LIMIT=20  CLIENTS_OVER=100  MAX_SESSIONS=20
#        SIZE=4096  PER_SESSION=1  BACKOFF=100 (ms)  RSS_EVERY=0.5 (s)  SOURCE_COUNT=2000 (0 = skip phase 1)
#        PAL_PORT=2756 SINK=2757  BENCH_REF=DIR  BENCH_RESULTS=DIR  BENCH_TMP=DIR (removed unless KEEP_TMP=1)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_REF="${BENCH_REF:-$REPO/../shared/bench-ref}"
[ -f "$BENCH_REF/lib.sh" ] || { echo "overload.sh: $BENCH_REF/lib.sh not found (set BENCH_REF)" >&2; exit 2; }
BENCH_REF="$(cd "$BENCH_REF" && pwd)"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
export BENCH_RESULTS="${BENCH_RESULTS:-$REPO/bench/results/overload-$STAMP}"
export BENCH_TMP="${BENCH_TMP:-/tmp/palisade-bench-overload.$$}"
export E2E_TIMEOUT="${E2E_TIMEOUT:-120}"
. "$BENCH_REF/lib.sh"

PAL_PORT="${PAL_PORT:-2756}"; SINK="${SINK:-2757}"
DURATION="${DURATION:-30}"; SIZE="${SIZE:-4096}"; PER_SESSION="${PER_SESSION:-1}"; BACKOFF="${BACKOFF:-100}"
CLIENTS_UNLOADED="${CLIENTS_UNLOADED:-10}"; CLIENTS_LIMIT="${CLIENTS_LIMIT:-20}"; CLIENTS_OVER="${CLIENTS_OVER:-100}"
MAX_SESSIONS="${MAX_SESSIONS:-20}"; RSS_EVERY="${RSS_EVERY:-0.5}"; SOURCE_COUNT="${SOURCE_COUNT:-2000}"
PALDIR="$BENCH_TMP/palisade"
BENCH_NAME=overload
PAL_MAX_SESSIONS="$MAX_SESSIONS"
PAL_LOG_LEVEL=warn
PAL_TOML_EXTRA='
[delivery]
concurrency = 100
initial_concurrency = 20'
. "$REPO/bench/lib-palisade.sh"

cleanup() {
  stop_tracked
  pal_stop
  sink_stop "$SINK"
  pal_save_log
  [ "${KEEP_TMP:-0}" = 1 ] || rm -rf "$BENCH_TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stress_lines() { grep -c '"event":"stress"' "$PALDIR/palisade.log" 2>/dev/null; }   # master logs each switch of stress mode (warn)
drain() { wait_until 120 pal_empty || log "queue still holds $(pal_queued) message(s) after 120 s"; sleep 1; }

# phase NAME CLIENTS -> one smtp-load run with RSS sampling; writes NAME.json (client counters plus Palisade's
# CPU, the client's CPU and peak RSS per role) and NAME.rss (the samples).
phase() {
  local name=$1 clients=$2 rss="$BENCH_RESULTS/$1.rss" c0 c1 sp lp out="$BENCH_RESULTS/$1.client.json"
  drain
  log "phase $name: $clients clients for $DURATION s (max_sessions = $MAX_SESSIONS, queued before: $(pal_queued))"
  : > "$rss"
  pal_rss_sampler "$rss" "$RSS_EVERY" 100000 & sp=$!; track_pid "$sp"
  sleep 1   # a few samples before the load: the resting RSS
  c0=$(tree_cpu "$PAL_PID"); local st0; st0=$(stress_lines)
  /usr/bin/time -f '%U %S' -o "$BENCH_RESULTS/$name.clienttime" \
    "$NODE" --disable-warning=ExperimentalWarning "$REPO/bench/smtp-load.ts" send --port "$PAL_PORT" \
    --clients "$clients" --duration "$DURATION" --size "$SIZE" --per-session "$PER_SESSION" --backoff "$BACKOFF" \
    --reply-timeout 30000 --tag "$name" > "$out" 2> "$BENCH_RESULTS/$name.client.err" & lp=$!; track_pid "$lp"
  wait "$lp"; local rc=$?; untrack_pid "$lp"
  c1=$(tree_cpu "$PAL_PID"); local st1; st1=$(stress_lines)
  sleep 1
  kill "$sp" 2>/dev/null; wait "$sp" 2>/dev/null; untrack_pid "$sp"
  [ "$rc" = 0 ] || { log "smtp-load exited $rc"; tail -5 "$BENCH_RESULTS/$name.client.err"; }
  # Peak and resting (first sample) RSS per role, in MB.
  local peaks; peaks=$(awk 'NR == 1 {for (i = 2; i <= 6; i++) r[i] = $i}
    {for (i = 2; i <= 6; i++) if ($i > p[i]) p[i] = $i; t = $2 + $3 + $4 + $5 + $6; if (t > pt) pt = t; if (NR == 1) rt = t}
    END {printf "\"rss_mb\":{\"samples\":%d,\"rest\":{\"master\":%.1f,\"qmgr\":%.1f,\"smtpd\":%.1f,\"cleanup\":%.1f,\"delivery\":%.1f,\"tree\":%.1f},\"peak\":{\"master\":%.1f,\"qmgr\":%.1f,\"smtpd\":%.1f,\"cleanup\":%.1f,\"delivery\":%.1f,\"tree\":%.1f}}",
      NR, r[2]/1024, r[3]/1024, r[4]/1024, r[5]/1024, r[6]/1024, rt/1024, p[2]/1024, p[3]/1024, p[4]/1024, p[5]/1024, p[6]/1024, pt/1024}' "$rss")
  local ccpu; ccpu=$(awk '{printf "%.2f", $1 + $2}' "$BENCH_RESULTS/$name.clienttime" 2>/dev/null)
  printf '{"phase":"%s","client":%s,"palisade_cpu_s":%.2f,"client_cpu_s":%s,"stress_switches":%d,%s}\n' "$name" "$(head -1 "$out")" \
    "$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" 'BEGIN{print (b - a) / hz}')" "${ccpu:-null}" $((st1 - st0)) "$peaks" > "$BENCH_RESULTS/$name.json"
  log "  $(cat "$BENCH_RESULTS/$name.json")"
}

# ---- main ----------------------------------------------------------------------------
for p in "$PAL_PORT" "$SINK"; do port_free "$p" || die "port $p is in use (set PAL_PORT/SINK)"; done
[ -x "$SMTP_SOURCE" ] || die "smtp-source not found (Debian package postfix)"
command -v /usr/bin/time >/dev/null || die "/usr/bin/time not found (Debian package time)"
mkdir -p "$BENCH_RESULTS" "$PALDIR"
log "results in $BENCH_RESULTS"
log "machine at start: $(machine_line)"

sink_start "$SINK" || die "smtp-sink did not start"
pal_config
pal_start
WARMUP="${WARMUP:-300}" warm "$PAL_PORT"

if [ "$SOURCE_COUNT" -gt 0 ]; then
  drain
  log "phase source-10: smtp-source -s 10, $SOURCE_COUNT x $SIZE B, end to end"
  run_one source-10 "$PAL_PORT" "$SINK" 10 "$SIZE" "$SOURCE_COUNT" "$PAL_PID" 1
fi
phase unloaded "$CLIENTS_UNLOADED"
phase at-limit "$CLIENTS_LIMIT"
phase overload "$CLIENTS_OVER"
drain
log "delivered to the sink in total: $(sink_count "$SINK"); still queued: $(pal_queued)"
STRESS=$(stress_lines)
pal_stop
log "palisade exit code on SIGTERM: $PAL_EXIT; stress mode switches: ${STRESS:-0}"
if grep -qE '"level":"(error|fatal)"' "$PALDIR/palisade.log" 2>/dev/null; then
  log "palisade logged errors:"; grep -E '"level":"(error|fatal)"' "$PALDIR/palisade.log" | head -5
fi
log "machine at end: $(machine_line)"

# ---- summary --------------------------------------------------------------------------
SUMMARY="$BENCH_RESULTS/summary.md"
"$NODE" -e '
const fs = require("fs");
const dir = process.argv[1], src = process.argv[2];
const ph = ["unloaded", "at-limit", "overload"].map((p) => JSON.parse(fs.readFileSync(`${dir}/${p}.json`, "utf8")));
const base = ph[0].client.msgs_per_s, limit = ph[1].client.msgs_per_s;
const out = [];
if (fs.existsSync(src)) {
  const r = fs.readFileSync(src, "utf8").trim().split("\n")[1].split("\t");
  out.push(`smtp-source -s 10, ${r[3]} x ${r[2]} B: injection ${r[5]} msgs/s, end to end ${r[7]} msgs/s, Palisade CPU ${(1000 * r[9] / r[3]).toFixed(2)} ms/msg, smtp-source exit ${r[13]}`, "");
}
out.push("| phase | clients | connections | 220 | 421 | other / no greeting / connect errors | acked (250 after DATA) | msgs/s | vs unloaded | vs at-limit | most sessions held at once | latency p50 / p99 ms | Palisade CPU s | client CPU s | stress mode switches | RSS MB master rest / peak | qmgr rest / peak | smtpd (all) peak | tree peak |");
out.push("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
for (const p of ph) {
  const c = p.client, r = p.rss_mb;
  out.push(`| ${p.phase} | ${c.clients} | ${c.connections} | ${c.greet_220} | ${c.greet_421} | ${c.greet_other} / ${c.greet_none} / ${c.connect_errors} | ${c.acked} | ${c.msgs_per_s} | ${(c.msgs_per_s / base).toFixed(2)} | ${(c.msgs_per_s / limit).toFixed(2)} | ${c.max_in_session} | ${c.latency_ms.p50} / ${c.latency_ms.p99} | ${p.palisade_cpu_s} | ${p.client_cpu_s} | ${p.stress_switches} | ${r.rest.master} / ${r.peak.master} | ${r.rest.qmgr} / ${r.peak.qmgr} | ${r.peak.smtpd} | ${r.peak.tree} |`);
}
const o = ph[2].client;
out.push("", `Overload: ${o.greet_421} refusals (${(o.greet_421 / o.elapsed_s).toFixed(0)}/s), other replies ${JSON.stringify(o.other_replies)}; errors after admission: data 4xx ${o.data_4xx}, 5xx ${o.data_5xx}, rejected commands ${o.cmd_rejected}, lost in session ${o.lost_in_session}, no reply after DATA ${o.no_reply_after_data}.`);
fs.writeFileSync(`${dir}/summary.md`, out.join("\n") + "\n");
' "$BENCH_RESULTS" "$BENCH_RESULTS/source-10.tsv"
echo
cat "$SUMMARY"
