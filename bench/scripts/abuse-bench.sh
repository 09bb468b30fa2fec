#!/usr/bin/env bash
# The transport under abuse: a legitimate client (agent token requests, client_secret_jwt,
# HTTPS keep-alive, open loop at a steady rate) measured while the load generator holds
# hostile connections open beside it (`--attack`), with the server's memory sampled before,
# at its peak, and after the attack ends.
#
# Attacks (bench/src/attack.rs): none (the baseline), idle (connect, never send a
# ClientHello), slow-body (a token request declaring 1 MiB, all but one byte sent at once,
# then nothing), keep-alive (one request, then hold the connection; this run starts the
# server under a 1024 file-descriptor limit, soft and hard, as on a default system),
# refused-auth (operator token requests claiming one unknown client id with a wrong secret,
# back to back on ABUSE_REFUSERS keep-alive connections: growth of the server's memory and of
# the data directory per 50k refused requests, with the refusals' audit rows written at
# shutdown included).
#
# Loopback only, release builds, default server limits, two server threads, a fresh server
# per run on one data directory, every run bounded in time (ABUSE_DURATION, default 10 s,
# plus a 3 s attack ramp and ABUSE_SETTLE, default 8 s, for memory to settle). About 2 min.
#
# Env: ABUSE_RATE (default 500 req/s), ABUSE_ATTACKERS (default 1000),
# ABUSE_OUT (default bench/results/abuse.md), ABUSE_BIN (default target/release).
set -euo pipefail
cd "$(dirname "$0")/../.."

RATE=${ABUSE_RATE:-500}
REFUSERS=${ABUSE_REFUSERS:-4}
ATTACKERS=${ABUSE_ATTACKERS:-1000}
DURATION=${ABUSE_DURATION:-10s}
SETTLE=${ABUSE_SETTLE:-8}
OUT=${ABUSE_OUT:-bench/results/abuse.md}
BIN=${ABUSE_BIN:-target/release}
# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
bench_require abuse-bench jq openssl
bench_workdir
bench_config EdDSA
LOAD_BEFORE=$(uptime)

rss_kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }

# start FD_LIMIT — the server under `ulimit -n FD_LIMIT` (soft and hard), or the inherited
# limit with FD_LIMIT "-".
start() {
    if [ "$1" = - ]; then
        serve_latchkey --threads 2
    else
        bash -c 'ulimit -n "$0" && exec "$@"' "$1" "$BIN/latchkey" serve --data-dir "$DATA" \
            --listen 127.0.0.1:0 --config "$WORK/latchkey.toml" --threads 2 \
            > "$WORK/lk.out" 2> "$WORK/lk.err" &
        LK_PID=$!
        LK_URL=$(wait_ready "$WORK/lk.out" 'latchkey listening on ' "$WORK/lk.err" "$LK_PID")
    fi
}

# measure LABEL FD_LIMIT LOADGEN-ARGS… — one server, one run; JSON summary and memory
# samples appended to $RESULTS.
measure() {
    local label=$1 fd=$2
    shift 2
    echo "== $label" >&2
    start "$fd"
    # Warm up (agents created on the first run, reused after), then read the baseline.
    "$BIN/latchkey-loadgen" --target "$LK_URL" --ca "$DATA/ca.pem" --credentials "$WORK/operator.json" \
        --agents-file "$AGENTS" --scenario token-secret-jwt --agents 200 --connections 4 \
        --requests 2000 --assertion-lifetime 5s --json > /dev/null
    local before; before=$(rss_kib "$LK_PID" VmRSS)
    local data_before; data_before=$(du -sk "$DATA" | cut -f1)
    echo "$BIN/latchkey-loadgen --target URL --ca DATA/ca.pem --credentials operator.json --agents-file agents.jsonl --scenario token-secret-jwt --agents 200 --connections 4 --rate $RATE --duration $DURATION --assertion-lifetime 5s $* --json    # $label (server: latchkey serve --threads 2$([ "$fd" = - ] || echo ", ulimit -n $fd"))" >> "$COMMANDS"
    "$BIN/latchkey-loadgen" --target "$LK_URL" --ca "$DATA/ca.pem" --credentials "$WORK/operator.json" \
        --agents-file "$AGENTS" --scenario token-secret-jwt --agents 200 --connections 4 \
        --rate "$RATE" --duration "$DURATION" --assertion-lifetime 5s "$@" --json > "$WORK/one.json"
    local peak; peak=$(rss_kib "$LK_PID" VmHWM)
    sleep "$SETTLE"
    local after; after=$(rss_kib "$LK_PID" VmRSS)
    local metrics; metrics=$(curl -sk --cacert "$DATA/ca.pem" "$LK_URL/metrics" \
        | grep -E '^latchkey_connections_closed_total\{reason="(evicted|hello_timeout|body_timeout|body_budget|connection_limit|source_limit|handshake_limit)"\}' \
        | sed -E 's/^latchkey_connections_closed_total\{reason="([a-z_]+)"\} /\1=/' | tr '\n' ' ')
    echo "$label: $(uptime)" >> "$LOADS"
    local load; load=$(cut -d' ' -f1 /proc/loadavg)
    # Stopped first: the shutdown writes what was tallied, and that counts.
    stop_latchkey
    local data_after; data_after=$(du -sk "$DATA" | cut -f1)
    jq -c --arg lbl "$label" --argjson before "$before" --argjson peak "$peak" --argjson after "$after" \
        --argjson dbefore "$data_before" --argjson dafter "$data_after" \
        --arg closed "$metrics" --arg load "$load" \
        '{"label": $lbl, "rss_before_kib": $before, "rss_peak_kib": $peak, "rss_after_kib": $after, "data_before_kib": $dbefore, "data_after_kib": $dafter, "closed": $closed, "load": $load,
          "refused": ([.notes[] | capture("refused-auth: (?<n>[0-9]+) requests refused") | .n | tonumber] | first // 0)} + del(.series)' \
        "$WORK/one.json" >> "$RESULTS"
}

measure "no attack" -
measure "attack-idle x $ATTACKERS" - --attack idle --attack-connections "$ATTACKERS"
measure "attack-slowbody x $ATTACKERS" - --attack slow-body --attack-connections "$ATTACKERS"
measure "attack-keepalive x $ATTACKERS, fd limit 1024" 1024 --attack keep-alive --attack-connections "$ATTACKERS"
measure "attack-refused-auth x $REFUSERS" - --attack refused-auth --attack-connections "$REFUSERS" --attack-client-id guessed-client

{
    echo "# The transport under abuse"
    echo
    echo "Generated by \`bench/scripts/abuse-bench.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores; $(uname -sr))."
    echo "Legitimate client: agent token requests (client_secret_jwt, EdDSA access tokens), HTTPS"
    echo "keep-alive, 4 connections, open loop at $RATE req/s for $DURATION, latency from the scheduled"
    echo "time. Attackers: $ATTACKERS hostile connections from the same address (127.0.0.1), held from"
    echo "3 s before the timed phase to its end, every one the server closes reopened. Server: release"
    echo "build, default limits, two threads. RSS: before the attack (after a warm-up), peak (VmHWM),"
    echo "and ${SETTLE} s after the attack ended."
    echo
    echo "| run | requests | ok | success | errors by kind | p50 µs | p99 µs | RSS before MiB | peak MiB | after MiB | data dir growth KiB | connections the server closed, by reason |"
    echo "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    jq -r '
      def mib: . / 1024 | . * 10 | round / 10;
      "| \(.label) | \(.requests) | \(.ok) | \(if .requests > 0 then (.ok * 1000 / .requests | round / 10) else 0 end) % | \(.errors_by_kind | to_entries | map("\(.key) \(.value)") | join(", ")) | \(.latency_us.p50) | \(.latency_us.p99) | \(.rss_before_kib | mib) | \(.rss_peak_kib | mib) | \(.rss_after_kib | mib) | \(.data_after_kib - .data_before_kib) | \(.closed) |"' "$RESULTS"
    echo
    echo "Refused authentication (the data directory measured after the server stopped, so the"
    echo "tallied refusals written at shutdown count; the legitimate client's replay log is in it too):"
    echo
    jq -r '
      def mib: . / 1024 | . * 100 | round / 100;
      select(.refused > 0) |
      "- \(.label): \(.refused) requests refused; per 50k refused: RSS growth (peak − before) \((.rss_peak_kib - .rss_before_kib) * 50000 / .refused | mib) MiB, data directory growth \((.data_after_kib - .data_before_kib) * 50000 / .refused | mib) MiB"' "$RESULTS"
    echo
    echo "Notes from the load generator:"
    echo
    jq -r '"- \(.label): \(.notes | join("; "))"' "$RESULTS"
    echo
    echo "Machine load: before \`$LOAD_BEFORE\`; per run:"
    echo
    sed 's/^/    /' "$LOADS"
    echo
    echo "Commands:"
    echo
    echo '```'
    sed 's/^/ /' "$COMMANDS"
    echo '```'
} > "$OUT"
echo "wrote $OUT" >&2
