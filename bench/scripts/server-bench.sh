#!/usr/bin/env bash
# Server benchmark: requests/s and p50/p99 latency for a trivial route (GET /healthz) over
# loopback, Latchkey vs nginx (Debian) serving a static file on the same path with the same
# ECDSA P-256 certificate. Plain and TLS keep-alive with 1 and 64 connections, and new TLS
# connections per second (`Connection: close`: one full handshake per request).
#
# Loopback only, bounded duration (DURATION per run, 10 runs), starts and stops both servers
# itself, release build. Needs: nginx, wrk (`apt-get install -y nginx wrk`).
# Usage: bench/scripts/server-bench.sh [> bench/results/server-table.md]
# Env: DURATION (default 10s), THREADS (server threads / nginx workers, default nproc),
# LATCHKEY_BIN (use this binary instead of building).
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
THREADS=${THREADS:-$(nproc)}
command -v nginx >/dev/null && command -v wrk >/dev/null || {
    echo "needs nginx and wrk: apt-get install -y nginx wrk" >&2
    exit 1
}

# LATCHKEY_BIN skips the build (e.g. to bench an installed binary).
if [ -z "${LATCHKEY_BIN:-}" ]; then
    cargo build --release --locked -p latchkey-authority --bin latchkey >&2
fi
BIN=${LATCHKEY_BIN:-target/release/latchkey}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Starts `latchkey serve` and sets PORT once the ready line appears. Not called in `$(..)`:
# a subshell would lose the PID and leak the server.
start_latchkey() { # name, extra flags...
    local name=$1
    shift
    "$BIN" serve --data-dir "$WORK/$name" --listen 127.0.0.1:0 --threads "$THREADS" \
        --log-level warn --max-requests-per-connection 1000000 "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    for _ in $(seq 100); do
        if grep -q "listening on" "$WORK/$name.out" 2>/dev/null; then
            PORT=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/$name.out")
            return
        fi
        sleep 0.1
    done
    echo "latchkey ($name) did not start:" >&2
    cat "$WORK/$name.err" >&2
    exit 1
}

start_latchkey plain --insecure-plain-http
LK_PLAIN=$PORT
start_latchkey tls
LK_TLS=$PORT

# nginx with the certificate Latchkey generated, so both servers sign with the same key type.
mkdir -p "$WORK/nginx/html" "$WORK/nginx/logs"
printf '{"status":"ok"}' >"$WORK/nginx/html/healthz"
chmod a+rx "$WORK"; chmod -R a+rX "$WORK/nginx"
NG_PLAIN=18080
NG_TLS=18443
cat >"$WORK/nginx/nginx.conf" <<CONF
$( [ "$(id -u)" = 0 ] && echo "user root;" )
worker_processes $THREADS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    server {
        listen 127.0.0.1:$NG_PLAIN;
        listen 127.0.0.1:$NG_TLS ssl;
        ssl_certificate $WORK/tls/server.pem;
        ssl_certificate_key $WORK/tls/server.key;
        root $WORK/nginx/html;
        location = /healthz { default_type application/json; }
    }
}
CONF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' 2>"$WORK/nginx/logs/stderr" &
PIDS+=($!)
for _ in $(seq 50); do curl -fsS -o /dev/null "http://127.0.0.1:$NG_PLAIN/healthz" 2>/dev/null && break; sleep 0.1; done

# One wrk run → "| server | scenario | conns | req/s | p50 | p99 |".
run() { # server, scenario, url, connections, extra wrk args...
    local server=$1 scenario=$2 url=$3 conns=$4
    shift 4
    local threads=$(( conns < 2 ? 1 : 2 ))
    local out
    out=$(wrk -t"$threads" -c"$conns" -d"$DURATION" --latency "$@" "$url")
    local rps p50 p99 errors
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errors=$(grep -E "Non-2xx|Socket errors" <<<"$out" | tr -s ' ' | paste -sd';' - || true)
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$server" "$scenario" "$conns" "$rps" "$p50" "$p99" "${errors:-}"
}

echo "Machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)"
echo "Server threads / nginx workers: $THREADS; wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'); nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'); duration $DURATION per row"
echo
echo "| server | scenario | conns | req/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|---|"
for c in 1 64; do
    run latchkey "plain keep-alive" "http://127.0.0.1:$LK_PLAIN/healthz" "$c"
    run nginx "plain keep-alive" "http://127.0.0.1:$NG_PLAIN/healthz" "$c"
done
for c in 1 64; do
    run latchkey "TLS keep-alive" "https://127.0.0.1:$LK_TLS/healthz" "$c"
    run nginx "TLS keep-alive" "https://127.0.0.1:$NG_TLS/healthz" "$c"
done
# wrk 4.1 caches the TLS session, so these are new TCP connections with *resumed* handshakes.
run latchkey "new TLS connection per request (resumed)" "https://127.0.0.1:$LK_TLS/healthz" 16 -H 'Connection: close'
run nginx "new TLS connection per request (resumed)" "https://127.0.0.1:$NG_TLS/healthz" 16 -H 'Connection: close'

# Full handshakes: `openssl s_time -new` never resumes; one client process, so it measures
# latency-bound handshakes/s rather than server saturation.
stime() { # server, port
    local secs=${DURATION%s} start end out count
    start=$(date +%s.%N)
    out=$(openssl s_time -connect "127.0.0.1:$2" -new -time "$secs" -www /healthz 2>&1 || true)
    end=$(date +%s.%N)
    count=$(awk '/connections in [0-9]+ real seconds/ {print $1; exit}' <<<"$out")
    printf '| %s | full TLS handshake per connection (openssl s_time -new) | 1 | %s | | | |\n' \
        "$1" "$(awk -v n="${count:-0}" -v a="$start" -v b="$end" 'BEGIN {printf "%.0f", n / (b - a)}')"
}
stime latchkey "$LK_TLS"
stime nginx "$NG_TLS"
