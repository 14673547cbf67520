# lib-palisade.sh — helpers shared by the bench/*.sh scripts (source it after shared/bench-ref/lib.sh).
#
# The sourcing script sets, before calling these:
#   REPO          repo root (bin/palisade, bench/)
#   BENCH_NAME    short name for log lines ("accept", "e2e" ...)
#   PALDIR        Palisade's config, log and data directory (data in $PALDIR/var)
#   PAL_PORT SINK loopback ports: Palisade's listener, the next hop every message is relayed to
#   PFDIR PF_PORT Postfix's private instance (only for the pf_* helpers)
# and may set:
#   PAL_MAX_SESSIONS (500)  PAL_LOG_LEVEL (info: a line per event, as Postfix logs)  PAL_SMTP_EXTRA (more [smtp] lines)
#   PAL_TOML_EXTRA (whole sections appended after [transport], e.g. [delivery] or [queue])
#   PF_HOLD (0; 1 = Postfix accepts and holds, never delivers)
# Hooks: if the script defines pal_on_start / pal_on_stop, pal_start calls the first once Palisade listens and
# pal_stop the second before stopping it.
# Every process started here is tracked by PID: PAL_PID (Palisade's master; its children are found from it),
# Postfix through its own master (postfix stop), and anything the script registers with track_pid.

PAL_PID="${PAL_PID:-}"
PAL_EXIT=""   # exit code of the last Palisade pal_stop stopped
PF_STARTED=0
TRACKED_PIDS=()
NODE="${NODE:-$REPO/node_modules/node/bin/node}"

log() { printf '[%s %s] %s\n' "${BENCH_NAME:-bench}" "$(date -u +%T)" "$*"; }
die() { log "error: $*"; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# track_pid PID -> stopped (TERM, then KILL after 5 s) by stop_tracked, e.g. from the EXIT trap. Only for
# children of the calling shell (still unreaped, so their PIDs cannot have been reused).
track_pid() { TRACKED_PIDS+=("$1"); }
# untrack_pid PID -> forget it once it has been waited for (so a recycled PID is never signalled)
untrack_pid() { local p keep=(); for p in "${TRACKED_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; TRACKED_PIDS=("${keep[@]}"); }
stop_tracked() {
  local p
  for p in "${TRACKED_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${TRACKED_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  TRACKED_PIDS=()
}

machine_line() {   # one line for the log and RESULTS.md: CPUs, load average, commit
  echo "$(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); palisade $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet -- src 2>/dev/null || echo '+dirty')"
}

# ---- Palisade ------------------------------------------------------------------
pal_config() {
  mkdir -p "$PALDIR"
  cat > "$PALDIR/palisade.toml" <<EOF
[server]
user = ""
hostname = "mta-bench.localdomain"
data_dir = "$PALDIR/var"
drain_timeout = "5s"

[smtp]
listen = ["127.0.0.1:$PAL_PORT"]
max_sessions = ${PAL_MAX_SESSIONS:-500}
max_sessions_per_ip = 0
${PAL_SMTP_EXTRA:-}

[log]
level = "${PAL_LOG_LEVEL:-info}"

# Nothing leaves loopback: every message is relayed to the sink.
[transport]
"*" = "smtp:[127.0.0.1]:$SINK"
${PAL_TOML_EXTRA:-}
EOF
}
# pal_children ROLE -> PIDs of Palisade's children of that role ("main.ts child ROLE"), one a line.
pal_children() {
  local p
  [ -n "$PAL_PID" ] || return 0
  for p in $(descendants "$PAL_PID"); do
    [ "$p" = "$PAL_PID" ] && continue
    tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q " child $1 *\$" && echo "$p"
  done
}
pal_start() {
  "$REPO/bin/palisade" check-config --config "$PALDIR/palisade.toml" >/dev/null || die "palisade check-config failed"
  "$REPO/bin/palisade" start --config "$PALDIR/palisade.toml" >> "$PALDIR/palisade.log" 2>&1 &
  PAL_PID=$!
  wait_port "$PAL_PORT" || { tail -20 "$PALDIR/palisade.log"; die "palisade did not listen on $PAL_PORT"; }
  kill -0 "$PAL_PID" 2>/dev/null || { tail -20 "$PALDIR/palisade.log"; die "palisade exited"; }
  if declare -F pal_on_start >/dev/null; then pal_on_start; fi
  return 0
}
pal_stop() {
  [ -n "$PAL_PID" ] || return 0
  if declare -F pal_on_stop >/dev/null; then pal_on_stop; fi
  kill -TERM "$PAL_PID" 2>/dev/null
  for _ in $(seq 300); do kill -0 "$PAL_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$PAL_PID" 2>/dev/null; then
    log "palisade $PAL_PID did not stop in 30 s; killing it and its children"
    for p in $(descendants "$PAL_PID"); do kill -KILL "$p" 2>/dev/null; done
  fi
  wait "$PAL_PID" 2>/dev/null; PAL_EXIT=$?
  PAL_PID=""
}
# pal_save_log -> copies Palisade's log next to the results, before
# BENCH_TMP is removed
pal_save_log() { [ -f "$PALDIR/palisade.log" ] && cp "$PALDIR/palisade.log" "$BENCH_RESULTS/palisade.log" 2>/dev/null; return 0; }
pal_clean_start() { pal_stop; rm -rf "$PALDIR/var"; pal_start; }
# Messages only: cleanup's reserved files in incoming/ (write-only until a message is committed in them) are not.
pal_queued() {
  { find "$PALDIR/var/spool/incoming" -type f -perm -0600 2>/dev/null
    find "$PALDIR/var/spool/active" "$PALDIR/var/spool/deferred" -type f 2>/dev/null; } | wc -l
}
pal_empty() { [ "$(pal_queued)" = 0 ]; }

# vmrss_kb PID... -> sum of VmRSS (kB) of the given processes right now (0 for none)
vmrss_kb() {
  local f=() p
  for p in "$@"; do f+=("/proc/$p/status"); done
  [ ${#f[@]} -gt 0 ] || { echo 0; return; }
  cat "${f[@]}" 2>/dev/null | awk '/^VmRSS:/{s+=$2} END{print s+0}'
}
# pal_rss_sampler OUT INTERVAL MAX_SAMPLES & -> appends "epoch master qmgr smtpd cleanup delivery" (VmRSS kB;
# smtpd and delivery summed over their processes) to OUT every INTERVAL s while Palisade runs, at most
# MAX_SAMPLES lines; the caller tracks and stops it.
pal_rss_sampler() {
  local out=$1 iv=$2 max=$3 p role line
  for _ in $(seq "$max"); do
    kill -0 "$PAL_PID" 2>/dev/null || break
    line=$(for p in $(descendants "$PAL_PID"); do
        if [ "$p" = "$PAL_PID" ]; then role=master
        else role=$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | awk '$(NF-1) == "child" {print $NF}'); fi
        [ -n "$role" ] && awk -v r="$role" '/^VmRSS:/{print r, $2}' "/proc/$p/status" 2>/dev/null
      done | awk '{s[$1] += $2} END{printf "%d %d %d %d %d", s["master"], s["qmgr"], s["smtpd"], s["cleanup"], s["delivery"]}')
    echo "$(date +%s.%N | cut -c1-14) $line" >> "$out"
    sleep "$iv"
  done
}

# ---- Postfix (the reference instance, shared/bench-ref/postfix.sh) --------------------
PF_CMD() { postfix -c "$PFDIR/etc" "$@"; }
pf_master() { head -1 "$PFDIR/spool/pid/master.pid" 2>/dev/null | tr -d ' '; }
pf_start() {
  PORT="$PF_PORT" SINK="$SINK" PFDIR="$PFDIR" HOLD="${PF_HOLD:-0}" "$BENCH_REF/postfix.sh" setup || die "postfix setup failed"
  PORT="$PF_PORT" SINK="$SINK" PFDIR="$PFDIR" HOLD="${PF_HOLD:-0}" "$BENCH_REF/postfix.sh" start || die "postfix start failed"
  PF_STARTED=1
  wait_port "$PF_PORT" || die "postfix did not listen on $PF_PORT"
}
pf_stop() { [ "$PF_STARTED" = 1 ] && PF_CMD stop >/dev/null 2>&1; PF_STARTED=0; }
pf_purge() { postsuper -c "$PFDIR/etc" -d ALL "$@" >/dev/null 2>&1 || true; }   # [queue]: hold, deferred ... (default all)
pf_held() { find "$PFDIR/spool/hold" -type f 2>/dev/null | wc -l; }
pf_queued() { find "$PFDIR/spool/incoming" "$PFDIR/spool/active" "$PFDIR/spool/deferred" "$PFDIR/spool/maildrop" -type f 2>/dev/null | wc -l; }

# ---- load -----------------------------------------------------------------------------
# warm PORT [SIZE] -> WARMUP (default 300) messages of SIZE bytes (default 1 KB), 10 sessions, not measured;
# 0 = none. The cells warm both MTAs with their own message size, so a cell measures the steady state of the
# path it drives (for Palisade: code the JIT has compiled), not the first messages of a new size.
warm() {
  [ "${WARMUP:-300}" -gt 0 ] || return 0
  "$SMTP_SOURCE" -s 10 -l "${2:-1024}" -m "${WARMUP:-300}" -f "$FROM" -t "$RCPT" -M bench.example.com "127.0.0.1:$1" >/dev/null 2>&1 \
    || log "warm-up against port $1 failed"
}
# wait_until SECONDS CMD... -> runs CMD every 0.1 s until it succeeds (0) or SECONDS pass (1)
wait_until() {
  local to=$1; shift
  local n=$(( to * 10 ))
  for _ in $(seq "$n"); do "$@" && return 0; sleep 0.1; done
  "$@"
}
# smtp_load ARGS... -> bench/smtp-load.ts on the project's Node (see that file for the arguments)
smtp_load() { "$NODE" --disable-warning=ExperimentalWarning "$REPO/bench/smtp-load.ts" "$@"; }

# ---- summary ----------------------------------------------------------------------------
# ratio_table REF_TSV PAL_TSV RATE_COL REF_NAME PAL_NAME -> markdown table per cell (size, sessions): best and
# median msgs/s of each (RATE_COL: 6 = injection, 8 = end to end), Palisade / reference ratios of both, lowest
# and median CPU ms per message of the MTA tree, median peak PSS (MB), rounds, and a flag when a round had
# smtp-source errors or did not complete (e2e "NA"). Ratios: msgs/s higher is better for Palisade, CPU lower.
ratio_table() {
  awk -F'\t' -v RC="$3" -v RN="$4" -v PN="$5" -v REF="$(basename "$1" .tsv)" '
    function med(s,   a, n, i, j, t) { n = split(s, a, " "); if (n == 0) return -1
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    function mx(s,   a, n, i, m) { n = split(s, a, " "); m = -1; for (i = 1; i <= n; i++) if (a[i] + 0 > m) m = a[i] + 0; return m }
    function mn(s,   a, n, i, m) { n = split(s, a, " "); m = -1; for (i = 1; i <= n; i++) if (m < 0 || a[i] + 0 < m) m = a[i] + 0; return m }
    function r(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "NA" }
    FNR == 1 { next }
    { who = ($1 == REF) ? "F" : "P"; k = $2 FS $3; cells[k] = 1; n[who FS k]++
      if ($RC ~ /^NA/ || $14 != 0) bad[who FS k]++
      if ($RC !~ /^NA/) rate[who FS k] = rate[who FS k] " " $RC
      if ($10 != "NA") cpu[who FS k] = cpu[who FS k] " " (1000 * $10 / $4)
      if ($13 != "NA" && $13 > 0) pss[who FS k] = pss[who FS k] " " ($13 / 1024) }
    END {
      printf "| size | sessions | %s msgs/s best | %s msgs/s best | ratio best | %s median | %s median | ratio median | %s CPU ms/msg min / med | %s CPU ms/msg min / med | ratio CPU med | %s PSS MB | %s PSS MB | rounds |\n", RN, PN, RN, PN, RN, PN, RN, PN
      print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
      m = 0; for (k in cells) keys[++m] = k
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) {
        split(keys[i], a, FS); split(keys[j], b, FS)
        if (a[2] + 0 > b[2] + 0 || (a[2] == b[2] && a[1] + 0 > b[1] + 0)) { t = keys[i]; keys[i] = keys[j]; keys[j] = t }
      }
      for (i = 1; i <= m; i++) {
        k = keys[i]; split(k, a, FS); F = "F" FS k; P = "P" FS k
        fb = mx(rate[F]); pb = mx(rate[P]); fm = med(rate[F]); pm = med(rate[P])
        fc = med(cpu[F]); pc = med(cpu[P])
        printf "| %s KB | %s | %.0f | %.0f | %s | %.0f | %.0f | %s | %.2f / %.2f | %.2f / %.2f | %s | %.0f | %.0f | %d+%d%s |\n",
          a[2] / 1024, a[1], fb, pb, r(pb, fb), fm, pm, r(pm, fm), mn(cpu[F]), fc, mn(cpu[P]), pc, r(pc, fc),
          med(pss[F]), med(pss[P]), n[F], n[P], ((bad[F] + bad[P]) > 0 ? " (" (bad[F] + 0) "+" (bad[P] + 0) " incomplete or with smtp-source errors)" : "")
      }
    }' "$1" "$2"
}
