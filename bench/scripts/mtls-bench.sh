#!/usr/bin/env bash
# Benchmark: full TLS handshakes per second with and without client certificates, and
# token requests per second over mutual TLS with keep-alive.
#
# Handshakes: `latchkey-loadgen --scenario healthz --new-connection-per-request --no-resumption`
# (one GET /healthz per connection, the client keeps no TLS sessions, so every connection is a
# full TLS 1.3 handshake: ECDHE, server certificate and CertificateVerify, and with a client
# certificate the client's certificate chain verified against the trust store and its
# CertificateVerify). Tokens: `token-mtls` (agents registered with `tls_client_auth`, token
# request `grant_type=client_credentials&client_id=…`, no secret, certificate-bound token)
# and `token-secret-jwt` with and without a client certificate on the connection.
#
# Loopback only, release builds, one server thread, a fresh server process per run on one data
# directory (started and stopped by PID), every run bounded by a request count. About 2 minutes.
# Env: MTLS_REQUESTS (default 20000), MTLS_HANDSHAKES (default 3000),
# MTLS_OUT (default bench/results/mtls.md).
set -euo pipefail
cd "$(dirname "$0")/../.."

REQ=${MTLS_REQUESTS:-20000}
HS=${MTLS_HANDSHAKES:-3000}
OUT=${MTLS_OUT:-bench/results/mtls.md}
BIN=target/release
# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
bench_require mtls-bench jq openssl
bench_workdir
bench_config ES256
LOAD_BEFORE=$(uptime)


# start_latchkey off|optional|required — one server thread, HTTPS, ES256 access tokens.
start_latchkey() {
    serve_latchkey --threads 1 --client-auth "$1"
    echo "$BIN/latchkey serve --data-dir DATA --listen 127.0.0.1:0 --threads 1 --client-auth $1 --config (leeway 1s; [[tenants]] id=bench token-alg=ES256; operator client bench-operator)" >> "$COMMANDS"
}

# measure GROUP LABEL LOADGEN-ARGS… — one run, its JSON summary appended to $RESULTS.
measure() {
    local group=$1 label=$2
    shift 2
    echo "== $label" >&2
    echo "$BIN/latchkey-loadgen --target URL --ca DATA/ca.pem $* --json    # $label" | sed "s|$WORK|\$WORK|g" >> "$COMMANDS"
    "$BIN/latchkey-loadgen" --target "$LK_URL" --ca "$DATA/ca.pem" "$@" --json > "$WORK/one.json"
    echo "$label: $(uptime)" >> "$LOADS"
    jq -c --arg g "$group" --arg lbl "$label" --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
        '{"group": $g, "label": $lbl, "load": $load} + del(.series)' "$WORK/one.json" >> "$RESULTS"
}
# The data directory, its CA and server certificate come from a first start; the agent
# certificate is issued on the stopped directory (`latchkey cert issue` needs an existing store).
start_latchkey off
stop_latchkey
echo "$BIN/latchkey cert issue lg-agent --cn lg-agent --out \$WORK/lg-agent --data-dir DATA" >> "$COMMANDS"
"$BIN/latchkey" cert issue lg-agent --cn lg-agent --out "$WORK/lg-agent" --data-dir "$DATA" > /dev/null
CERT=(--client-cert "$WORK/lg-agent.pem" --client-key "$WORK/lg-agent.key")
HANDSHAKE=(--scenario healthz --new-connection-per-request --connections 16 --requests "$HS")
AGENT=(--credentials "$WORK/operator.json" --agents-file "$AGENTS")

# ---- 1. Handshakes.
start_latchkey off
measure hs "full handshake, server client-auth off, no client certificate" "${HANDSHAKE[@]}" --no-resumption
measure hs "resumed handshake (TLS 1.3 ticket), client-auth off, no client certificate" "${HANDSHAKE[@]}"
stop_latchkey
start_latchkey optional
measure hs "full handshake, client-auth optional, no client certificate" "${HANDSHAKE[@]}" --no-resumption
measure hs "full handshake, client-auth optional, client certificate" "${HANDSHAKE[@]}" --no-resumption "${CERT[@]}"
stop_latchkey
start_latchkey required
measure hs "full handshake, client-auth required, client certificate" "${HANDSHAKE[@]}" --no-resumption "${CERT[@]}"
measure hs "resumed handshake (TLS 1.3 ticket), client-auth required, client certificate" "${HANDSHAKE[@]}" "${CERT[@]}"
stop_latchkey

# ---- 2. Token requests over mutual TLS (client-auth optional: operators and agents share
# the port), keep-alive, 32 connections, ES256 access tokens.
start_latchkey optional
measure tok "token-mtls (tls_client_auth, no secret), mutual TLS, keep-alive" --scenario token-mtls \
    "${AGENT[@]}" "${CERT[@]}" --mtls-subject-dn CN=lg-agent --agents 200 --connections 32 --requests "$REQ"
stop_latchkey
start_latchkey optional
measure tok "token-secret-jwt (client_secret_jwt), mutual TLS (cnf-bound tokens), keep-alive" \
    --scenario token-secret-jwt "${AGENT[@]}" "${CERT[@]}" --agents 200 --connections 32 --requests "$REQ" \
    --assertion-lifetime 5s
stop_latchkey
start_latchkey optional
measure tok "token-secret-jwt (client_secret_jwt), TLS without client certificate, keep-alive" \
    --scenario token-secret-jwt "${AGENT[@]}" --agents 200 --connections 32 --requests "$REQ" \
    --assertion-lifetime 5s
stop_latchkey
start_latchkey optional
measure tok "token-mtls, full mutual-TLS handshake per request (no keep-alive, no resumption)" \
    --scenario token-mtls "${AGENT[@]}" "${CERT[@]}" --mtls-subject-dn CN=lg-agent --agents 200 \
    --connections 16 --new-connection-per-request --no-resumption --requests "$HS"
stop_latchkey

# ---- Markdown.
header='| run | requests | errors | ok/s | p50 µs | p90 µs | p99 µs | max µs | load |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |'
row() { jq -r '"| \(.label) | \(.requests) | \(.errors) | \(.throughput_rps | floor) | \(.latency_us.p50) | \(.latency_us.p90) | \(.latency_us.p99) | \(.latency_us.max) | \(.load) |"'; }
{
    echo "# Mutual TLS: handshakes and certificate-bound tokens"
    echo
    echo "Generated by \`bench/scripts/mtls-bench.sh\` on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "(commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))."
    echo
    echo '```'
    lscpu | head
    echo "nproc: $(nproc)"
    echo "before: $LOAD_BEFORE"
    cat "$LOADS"
    echo '```'
    echo
    echo "The machine has 2 cores, shared by the server (one thread), the load generator (one"
    echo "event-loop thread, which does the client half of every handshake) and whatever else"
    echo "was running: a load average above 2 means other work competed for the cores."
    echo "Server: ECDSA P-256 certificate from \`latchkey cert init\`; agent certificate from"
    echo "\`latchkey cert issue\` (ECDSA P-256, issued by the same CA). TLS 1.3, aws-lc-rs."
    echo
    echo "## TLS handshakes per second"
    echo
    echo "One \`GET /healthz\` per connection, 16 connections in parallel, the client resuming no"
    echo "sessions (\`--no-resumption\`) unless the row says *resumed*. ok/s = handshakes/s"
    echo "(each including TCP connect, the request and the close); latency = connect to response."
    echo
    echo "$header"
    jq -c 'select(.group == "hs")' "$RESULTS" | row
    echo
    echo "## Token requests per second over mutual TLS"
    echo
    echo "Server \`--client-auth optional\`, ES256 access tokens, 200 agents, 32 keep-alive"
    echo "connections (handshakes done before the clock starts) unless the row says otherwise."
    echo "\`token-mtls\`: agents registered with \`{\"token_endpoint_auth_method\": \"tls_client_auth\","
    echo "\"tls_client_auth_subject_dn\": \"CN=lg-agent\"}\`, all sharing the one client certificate;"
    echo "each request is \`grant_type=client_credentials&client_id=…\` and the token carries"
    echo "\`cnf.x5t#S256\`."
    echo
    echo "$header"
    jq -c 'select(.group == "tok")' "$RESULTS" | row
    echo
    echo "## Notes from the load generator"
    echo
    jq -r '.notes[] | "- \(.)"' "$RESULTS" | sort -u
    echo
    echo "## Commands"
    echo
    echo '```sh'
    echo "bench/scripts/mtls-bench.sh    # MTLS_REQUESTS=$REQ MTLS_HANDSHAKES=$HS"
    cat "$COMMANDS"
    echo '```'
} > "$OUT"
echo "wrote $OUT" >&2
