#!/usr/bin/env bash
# Idle footprint of `latchkey serve`: VmRSS (and VmHWM, the peak) from /proc/PID/status a few
# seconds after the ready line, on an empty data directory (first start) and again on the
# same directory (a second start), release build, default settings, loopback, plain HTTP (TLS
# changes nothing while idle). Then, optionally, a short closed-loop token run to show
# throughput.
# Usage: bench/scripts/footprint.sh
# Env: SETTLE (seconds to wait after ready, default 3), TOKENS (requests of the token run,
# default 20000; 0 skips it), LATCHKEY_BIN_DIR (use these binaries instead of building),
# SCALE_AGENTS (if set, N agents are then created through the API, the server restarted on
# that store and its idle RSS and RSS after the token runs read again; 1M takes ~10 min).
set -euo pipefail
cd "$(dirname "$0")/../.."

SETTLE=${SETTLE:-3}
TOKENS=${TOKENS:-20000}
if [ -z "${LATCHKEY_BIN_DIR:-}" ]; then
    cargo build --release --locked -p latchkey-authority -p latchkey-bench --bins >&2
fi
BIN=${LATCHKEY_BIN_DIR:-target/release}
. bench/scripts/lib.sh
bench_require footprint jq openssl
bench_workdir
bench_config EdDSA

rss() { # pid → "VmRSS kB VmHWM kB"
    awk '/^VmRSS|^VmHWM/ { printf "%s %s kB  ", $1, $2 }' "/proc/$1/status"
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for start in first second; do
    serve_latchkey --insecure-plain-http --threads 2
    sleep "$SETTLE"
    echo "$start start, idle ${SETTLE}s after ready: $(rss "$LK_PID")"
    [ "$start" = second ] || stop_latchkey
done
if [ "$TOKENS" -gt 0 ]; then
    "$BIN/latchkey-loadgen" --target "$LK_URL" --insecure-plain --credentials "$WORK/operator.json" \
        --requests 5000 --connections 32 --json > /dev/null
    for run in 1 2 3; do
        "$BIN/latchkey-loadgen" --target "$LK_URL" --insecure-plain --credentials "$WORK/operator.json" \
            --requests "$TOKENS" --connections 32 --json \
            | jq -r '"token run '"$run"': \(.throughput_rps | floor) tokens/s, p99 \(.latency_us.p99) µs, \(.errors) errors"'
    done
    echo "after the token runs: $(rss "$LK_PID")"
fi
stop_latchkey
if [ -n "${SCALE_AGENTS:-}" ]; then
    serve_latchkey --insecure-plain-http --threads 2
    t0=$(date +%s)
    "$BIN/latchkey-loadgen" --target "$LK_URL" --insecure-plain --credentials "$WORK/operator.json" \
        --agents "$SCALE_AGENTS" --agents-file "$WORK/agents.jsonl" --prepare-threads 32 \
        --requests 100 --json > /dev/null
    echo "created $SCALE_AGENTS agents in $(( $(date +%s) - t0 )) s"
    stop_latchkey
    serve_latchkey --insecure-plain-http --threads 2
    sleep "$SETTLE"
    echo "$SCALE_AGENTS agents, idle ${SETTLE}s after ready: $(rss "$LK_PID")"
    for run in 1 2 3; do
        "$BIN/latchkey-loadgen" --target "$LK_URL" --insecure-plain --credentials "$WORK/operator.json" \
            --agents "$SCALE_AGENTS" --agents-file "$WORK/agents.jsonl" \
            --requests "${TOKENS:-20000}" --connections 32 --json \
            | jq -r '"token run '"$run"' over '"$SCALE_AGENTS"' agents: \(.throughput_rps | floor) tokens/s, p99 \(.latency_us.p99) µs, \(.errors) errors"'
    done
    echo "$SCALE_AGENTS agents, after the token runs: $(rss "$LK_PID")"
    stop_latchkey
fi
