#!/usr/bin/env bash
# crashloop.sh — the long crash-loop proof: DURATION s of CLIENTS concurrent senders while a random child of
# Palisade's master (smtpd, cleanup, qmgr or a delivery agent) gets SIGKILL every KILL_EVERY s; then every
# message that was answered 250 must have reached the next hop, intact, duplicates counted.
# (The bounded CI version is test/integration/lp-crashloop.test.ts: 10 senders, 20 s, a kill every 2 s.)
#
# Palisade relays everything to a Postfix smtp-sink that dumps each message to its own file (smtp-sink -d).
# Load: bench/smtp-load.ts, CLIENTS clients, PER_SESSION messages per connection, each message with a unique
# Message-ID and a body derived from it; every Message-ID answered 250 after DATA is recorded. A client whose
# session is cut (killed smtpd) or refused (451 from a killed cleanup) connects again after BACKOFF ms.
# Kills: roles in random order, each once per round of four (as in the CI test), the victim a random process of
# that role; a role that is between restarts is skipped for that tick. Retries are fast so the drain is short:
# [queue] retry_min = 1s, retry_max = 2s, scan_interval = 500ms; [delivery] connect_timeout 2s, timeout 5s.
# After the load: wait (at most DRAIN_TIMEOUT s) until the queue is empty and the sink holds every
# acknowledged Message-ID, then check with `smtp-load.ts verify`: missing, duplicate and not-acked deliveries,
# dumps whose body differs from what was sent; plus spool/corrupt/, the log's child exits and crash-loop
# reports, every role running again, and Palisade's exit code on SIGTERM. qmgr "corrupt" log lines whose error
# is ENOENT (the file was already gone) are counted apart and do not fail the run; unreadable files do.
#
# Usage: bench/crashloop.sh         (results under bench/results/crashloop-<UTC time>/; ~1.5 min)
# Env:   DURATION=60  CLIENTS=50  KILL_EVERY=3 (s)  PER_SESSION=5  SIZE=2048  BACKOFF=100 (ms)
#        DRAIN_TIMEOUT=180  PAL_PORT=2766 SINK=2767  BENCH_REF=DIR  BENCH_RESULTS=DIR  BENCH_TMP=DIR (KEEP_TMP=1)
# Exit status: 0 when every acknowledged message arrived intact and nothing is corrupt, 1 otherwise.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_REF="${BENCH_REF:-$REPO/../shared/bench-ref}"
[ -f "$BENCH_REF/lib.sh" ] || { echo "crashloop.sh: $BENCH_REF/lib.sh not found (set BENCH_REF)" >&2; exit 2; }
BENCH_REF="$(cd "$BENCH_REF" && pwd)"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
export BENCH_RESULTS="${BENCH_RESULTS:-$REPO/bench/results/crashloop-$STAMP}"
export BENCH_TMP="${BENCH_TMP:-/tmp/palisade-bench-crashloop.$$}"
. "$BENCH_REF/lib.sh"

PAL_PORT="${PAL_PORT:-2766}"; SINK="${SINK:-2767}"
DURATION="${DURATION:-60}"; CLIENTS="${CLIENTS:-50}"; KILL_EVERY="${KILL_EVERY:-3}"; PER_SESSION="${PER_SESSION:-5}"
SIZE="${SIZE:-2048}"; BACKOFF="${BACKOFF:-100}"; DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-180}"
PALDIR="$BENCH_TMP/palisade"
SINKDIR="$BENCH_TMP/sink"
TAG="crash$STAMP"
BENCH_NAME=crashloop
PAL_MAX_SESSIONS=500
PAL_LOG_LEVEL=warn
PAL_TOML_EXTRA='
[queue]
retry_min = "1s"
retry_max = "2s"
scan_interval = "500ms"

[delivery]
concurrency = 100
initial_concurrency = 20
connect_timeout = "2s"
timeout = "5s"'
. "$REPO/bench/lib-palisade.sh"
SINK_PID=""
ROLES=(smtpd cleanup qmgr delivery)

cleanup() {
  stop_tracked
  pal_stop
  pal_save_log
  [ "${KEEP_TMP:-0}" = 1 ] || rm -rf "$BENCH_TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sink_files() { find "$SINKDIR" -type f 2>/dev/null | wc -l; }
# The sink: smtp-sink dumping every transaction into its own file under $SINKDIR (as nobody: it refuses root).
dump_sink_start() {
  mkdir -p "$SINKDIR"; chown nobody "$SINKDIR"; chmod 755 "$SINKDIR"
  "$SMTP_SINK" -u nobody -h sink.bench.example -m 500 -d "$SINKDIR/%H%M%S." "127.0.0.1:$SINK" 1024 \
    > "$BENCH_RESULTS/sink.err" 2>&1 &
  SINK_PID=$!; track_pid "$SINK_PID"
  wait_port "$SINK" || die "smtp-sink did not listen on $SINK"
}
# Queue empty and at least one dump per acknowledged message (the exact check comes after).
drained() { pal_empty && [ "$(sink_files)" -ge "$(wc -l < "$BENCH_RESULTS/acked.txt")" ]; }
sink_settled() { local a; a=$(sink_files); sleep 1; [ "$(sink_files)" = "$a" ]; }

# ---- main ----------------------------------------------------------------------------
for p in "$PAL_PORT" "$SINK"; do port_free "$p" || die "port $p is in use (set PAL_PORT/SINK)"; done
[ -x "$SMTP_SINK" ] || die "smtp-sink not found (Debian package postfix)"
mkdir -p "$BENCH_RESULTS" "$PALDIR"
log "results in $BENCH_RESULTS"
log "machine at start: $(machine_line)"
log "$CLIENTS clients for $DURATION s, $PER_SESSION messages per session, $SIZE B bodies; SIGKILL to a random child every $KILL_EVERY s"

dump_sink_start
pal_config
pal_start
MASTER_RSS0=$(awk '/^VmRSS:/{print $2}' "/proc/$PAL_PID/status")

"$NODE" --disable-warning=ExperimentalWarning "$REPO/bench/smtp-load.ts" send --port "$PAL_PORT" --clients "$CLIENTS" \
  --duration "$DURATION" --size "$SIZE" --per-session "$PER_SESSION" --backoff "$BACKOFF" --reply-timeout 15000 \
  --tag "$TAG" --ids "$BENCH_RESULTS/acked.txt" --timeline "$BENCH_RESULTS/timeline.tsv" > "$BENCH_RESULTS/client.json" 2> "$BENCH_RESULTS/client.err" &
LOAD_PID=$!; track_pid "$LOAD_PID"
T0=$(date +%s)

# The kill loop: one tick every KILL_EVERY s while the load runs (bounded by DURATION / KILL_EVERY + 1 ticks).
printf 'at_s\trole\tpid\n' > "$BENCH_RESULTS/kills.tsv"
bag=()
for _ in $(seq $(( DURATION / KILL_EVERY + 1 ))); do
  sleep "$KILL_EVERY"
  kill -0 "$LOAD_PID" 2>/dev/null || break
  [ $(( $(date +%s) - T0 )) -lt "$DURATION" ] || break
  [ ${#bag[@]} -gt 0 ] || bag=($(printf '%s\n' "${ROLES[@]}" | shuf))
  role=${bag[0]}; bag=("${bag[@]:1}")
  victims=($(pal_children "$role"))
  if [ ${#victims[@]} = 0 ]; then log "  no $role running right now (between restarts); no kill this tick"; continue; fi
  victim=${victims[$(( RANDOM % ${#victims[@]} ))]}
  if kill -KILL "$victim" 2>/dev/null; then
    printf '%s\t%s\t%s\n' $(( $(date +%s) - T0 )) "$role" "$victim" >> "$BENCH_RESULTS/kills.tsv"
    log "  SIGKILL $role $victim"
  fi
done
wait "$LOAD_PID"; LOAD_RC=$?; untrack_pid "$LOAD_PID"
LOAD_END=$(date +%s)
log "load done (exit $LOAD_RC): $(cat "$BENCH_RESULTS/client.json")"
ACKED=$(wc -l < "$BENCH_RESULTS/acked.txt")

# Drain: queue empty and a dump for every acknowledged message, then the sink quiet for a second.
log "draining: $(pal_queued) queued, $(sink_files) dumps, $ACKED acknowledged"
if wait_until "$DRAIN_TIMEOUT" drained; then DRAINED=1; else DRAINED=0; log "not drained after $DRAIN_TIMEOUT s: $(pal_queued) queued"; fi
wait_until 10 sink_settled
DRAIN_S=$(( $(date +%s) - LOAD_END ))
log "drain took ${DRAIN_S} s; $(sink_files) dumps"

# Is Palisade whole again? Every role running, a 220 greeting on the port.
sleep 2
RUNNING=""; for r in "${ROLES[@]}"; do RUNNING="$RUNNING $r:$(pal_children "$r" | wc -l)"; done
GREETING=$(timeout 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PAL_PORT; head -c 3 <&3; printf 'QUIT\r\n' >&3" 2>/dev/null)
MASTER_RSS1=$(awk '/^VmRSS:/{print $2}' "/proc/$PAL_PID/status")
CORRUPT=$(find "$PALDIR/var/spool/corrupt" -type f 2>/dev/null | wc -l)
HELD=$(find "$PALDIR/var/spool/hold" -type f 2>/dev/null | wc -l)
QUEUED=$(pal_queued)
pal_stop
stop_tracked   # the sink

# ---- verify and report --------------------------------------------------------------
smtp_load verify --acked "$BENCH_RESULTS/acked.txt" --sink-dir "$SINKDIR" --tag "$TAG" --size "$SIZE" > "$BENCH_RESULTS/verify.json"
L="$PALDIR/palisade.log"
EXITS=$(grep '"event":"child-exit"' "$L" | grep -o '"role":"[a-z]*"' | cut -d'"' -f4 | sort | uniq -c | awk '{printf "%s%s:%s", (NR > 1 ? " " : ""), $2, $1}')
CRASHLOOPS=$(grep -c '"event":"crash-loop"' "$L")
# qmgr logs "corrupt" when it cannot read a queue file; ENOENT means the file was already gone (a stale
# directory listing: the message was delivered or moved meanwhile), not a damaged file: counted apart.
CORRUPT_LOG=$(grep '"event":"corrupt"' "$L" | grep -vc '"err":"ENOENT')
CORRUPT_ENOENT=$(grep '"event":"corrupt"' "$L" | grep -c '"err":"ENOENT')
CHANNEL_CLOSED=$(grep '"event":"child-error"' "$L" | grep -c 'Channel closed')
ERRORS=$(grep -E '"level":"(error|fatal)"' "$L" | grep -v '"event":"crash-loop"' | grep -v '"err":"ENOENT' | grep -vc 'Channel closed')
KILLS=$(awk -F'\t' 'NR > 1 {n[$2]++; t++} END {printf "%d (", t; s = ""; for (r in n) { printf "%s%s:%d", s, r, n[r]; s = " " } printf ")"}' "$BENCH_RESULTS/kills.tsv")
"$NODE" -e '
const fs = require("fs");
const [dir, kills, exits, running, greeting, corrupt, held, queued, corruptLog, crashLoops, errors, drainS, drained, rss0, rss1, palExit, killEvery, corruptEnoent, channelClosed] = process.argv.slice(1);
const c = JSON.parse(fs.readFileSync(`${dir}/client.json`, "utf8").trim().split("\n")[0] || "{}");
const v = JSON.parse(fs.readFileSync(`${dir}/verify.json`, "utf8"));
const ok = v.missing === 0 && v.bad_body === 0 && v.no_message_id === 0 && v.foreign_ids === 0 && Number(corrupt) === 0 && Number(corruptLog) === 0;
const out = [
  "| what | value |", "|---|---|",
  `| load | ${c.clients} clients, ${c.elapsed_s} s, ${c.per_session} msgs/session, ${c.size} B bodies |`,
  `| SIGKILLs | ${kills} |`,
  `| child exits logged by master | ${exits || "none"} |`,
  `| crash-loop reports (5 deaths of one slot in 60 s) | ${crashLoops} |`,
  `| connections / greeted 220 | ${c.connections} / ${c.greet_220} |`,
  `| acknowledged (250 after DATA) | ${v.acked} (${c.msgs_per_s} msgs/s) |`,
  `| refused after DATA (4xx / 5xx), session cut before the 250, other refusals | ${c.data_4xx} / ${c.data_5xx}, ${c.no_reply_after_data}, ${c.cmd_rejected + c.lost_in_session} |`,
  `| delivered: dumps / distinct Message-IDs | ${v.dumps} / ${v.delivered_distinct} |`,
  `| **acknowledged but missing** | **${v.missing}**${v.missing ? " e.g. " + v.missing_examples.slice(0, 3).join(", ") : ""} |`,
  `| duplicates: IDs delivered more than once / extra copies | ${v.duplicate_ids} / ${v.duplicate_copies} |`,
  `| delivered though never acknowledged (cut between commit and 250) | ${v.delivered_not_acked} |`,
  `| dumps with a wrong body / without our Message-ID | ${v.bad_body} / ${v.no_message_id + v.foreign_ids} |`,
  `| spool corrupt/ files, "corrupt" log events (file unreadable) | ${corrupt}, ${corruptLog} |`,
  `| "corrupt" log events with ENOENT (file already gone: a stale listing, not damage) | ${corruptEnoent} |`,
  `| left in the queue after the drain, in hold/ | ${queued}, ${held} |`,
  `| drain after the load (to an empty queue and every ack delivered) | ${drainS} s${drained === "1" ? "" : " (NOT drained)"} |`,
  `| processes running after the run | ${running.trim()}; greeting ${greeting || "none"} |`,
  `| master VmRSS start / end | ${(rss0 / 1024).toFixed(1)} / ${(rss1 / 1024).toFixed(1)} MB |`,
  `| master "child-error: Channel closed" lines (a notice sent to a dead child) | ${channelClosed} |`,
  `| other error log lines | ${errors} |`,
  `| Palisade exit code on SIGTERM | ${palExit} |`,
  `| verdict | ${ok ? "every acknowledged message delivered intact, nothing corrupt" : "FAILED"} |`,
];
// What each kill cost the senders: from the second of the kill (the client clock starts a fraction of a second
// after the script clock) over the next W = min(3, KILL_EVERY) s, per role: refusals after DATA, sessions cut, and messages acknowledged
// against the median of all W-s windows of the run.
const tl = fs.readFileSync(`${dir}/timeline.tsv`, "utf8").trim().split("\n").slice(1).map((l) => l.split("\t").map(Number));
const W = Math.max(1, Math.min(3, Math.floor(Number(killEvery))));
const win = (from) => [...Array(W).keys()].map((i) => tl[from + i] || [from + i, 0, 0, 0, 0]).reduce((a, r) => a.map((x, j) => x + r[j]), [0, 0, 0, 0, 0]);
const all = tl.slice(0, -W).map((_, i) => win(i)[1]).sort((a, b) => a - b);
const median = all.length ? all[Math.floor(all.length / 2)] : 0;
const per = {};
for (const l of fs.readFileSync(`${dir}/kills.tsv`, "utf8").trim().split("\n").slice(1)) {
  const [at, role] = l.split("\t");
  const w = win(Number(at));
  const p = (per[role] ??= { kills: 0, acked: 0, d4: 0, cut: 0 });
  p.kills++; p.acked += w[1]; p.d4 += w[2]; p.cut += w[4];
}
out.push("", `After each kill, ${W} s from the second of the kill (mean per kill; the median ${W}-s window of the run acknowledged ${median} messages):`, "",
  "| role killed | kills | acknowledged in those s | vs median window | 451 after DATA | sessions cut |", "|---|---|---|---|---|---|");
for (const [role, p] of Object.entries(per).sort()) {
  out.push(`| ${role} | ${p.kills} | ${(p.acked / p.kills).toFixed(0)} | ${median ? (p.acked / p.kills / median).toFixed(2) : "NA"} | ${(p.d4 / p.kills).toFixed(0)} | ${(p.cut / p.kills).toFixed(1)} |`);
}
fs.writeFileSync(`${dir}/summary.md`, out.join("\n") + "\n");
process.exit(ok ? 0 : 1);
' "$BENCH_RESULTS" "$KILLS" "$EXITS" "$RUNNING" "$GREETING" "$CORRUPT" "$HELD" "$QUEUED" "$CORRUPT_LOG" "$CRASHLOOPS" "$ERRORS" \
  "$DRAIN_S" "$DRAINED" "$MASTER_RSS0" "$MASTER_RSS1" "$PAL_EXIT" "$KILL_EVERY" "$CORRUPT_ENOENT" "$CHANNEL_CLOSED"
OK=$?
if [ "$(grep -E '"level":"(error|fatal)"' "$L" | grep -vc '"event":"crash-loop"')" -gt 0 ]; then
  log "error lines in Palisade's log, first of each event (other than crash-loop; whole log: $BENCH_RESULTS/palisade.log):"
  grep -E '"level":"(error|fatal)"' "$L" | grep -v '"event":"crash-loop"' | awk '{e = $0; sub(/.*"event":"/, "", e); sub(/".*/, "", e); if (!(e in seen)) { seen[e] = 1; print } }' | head -10
fi
log "machine at end: $(machine_line)"
echo
cat "$BENCH_RESULTS/summary.md"
[ "$DRAINED" = 1 ] || OK=1
exit "$OK"
