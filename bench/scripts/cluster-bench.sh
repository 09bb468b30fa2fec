#!/usr/bin/env bash
# Benchmark: authorities on etcd (`serve --store etcd://…`) against a single-node redb server,
# in the same run, on loopback:
#   1. token requests/s per node: one redb node alone; cluster node 1 alone; both cluster nodes
#      loaded at the same time (one load generator each);
#   2. writes: agent creation latency (sequential, one at a time) and write throughput (the load
#      generator's agent preparation: create + boarding configuration + register, 8 clients);
#   3. revocation reach: an agent offboarded on node 1, then the time until node 2 refuses it;
#   4. joining with CLUSTER_BIG agents (made offline with `agent import --data-dir`, moved into
#      a fresh etcd with `cluster import`): a fresh node (a full load), the same node restarted
#      on its mirror, a second fresh node, each until it listens.
#
# A 3-member etcd on loopback, two Latchkey nodes with one server thread each, release builds,
# every run bounded (a duration or a count), everything started and stopped by PID. The cluster's
# results go into bench/results/cluster.md below its build-cost section, which is kept.
#
# Env: CLUSTER_DURATION (each token run, default 10s: runs of both nodes overlap), CLUSTER_WRITES (agents per
# write-throughput run, default 1000), CLUSTER_BIG (agents for the rejoin, default 100000),
# CLUSTER_OUT (default bench/results/cluster.md), ETCD (default: etcd on the PATH).
# Build first: cargo build --release --locked -p latchkey-authority -p latchkey-bench \
#     --features latchkey-authority/etcd --bins
set -euo pipefail
cd "$(dirname "$0")/../.."

DUR=${CLUSTER_DURATION:-10s}
WRITES=${CLUSTER_WRITES:-1000}
BIG=${CLUSTER_BIG:-100000}
OUT=${CLUSTER_OUT:-bench/results/cluster.md}
ETCD=${ETCD:-$(command -v etcd || true)}
BIN=target/release
API=/api/agentmanagement/v3
# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
bench_require cluster-bench jq openssl curl python3
[ -n "$ETCD" ] && [ -x "$ETCD" ] || { echo "cluster-bench: needs etcd (apt-get install etcd-server)" >&2; exit 2; }
"$BIN/latchkey" serve --help | grep -q -- '--store' || { echo "cluster-bench: $BIN/latchkey has no --store" >&2; exit 2; }
bench_workdir
PIDS=()
cluster_cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    bench_cleanup
}
trap cluster_cleanup EXIT
LOAD_BEFORE=$(uptime)
NOTES=$WORK/notes.md
: > "$NOTES"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# ---- etcd: three members on loopback.
start_etcd() {
    local i cp=() pp=() initial=""
    ETCD_PIDS=()
    rm -rf "$WORK/etcd"
    for i in 1 2 3; do cp+=("$(free_port)"); pp+=("$(free_port)"); done
    for i in 0 1 2; do initial+="${initial:+,}m$((i + 1))=http://127.0.0.1:${pp[$i]}"; done
    ENDPOINTS=""
    for i in 0 1 2; do
        "$ETCD" --name "m$((i + 1))" --data-dir "$WORK/etcd/m$((i + 1))" \
            --listen-client-urls "http://127.0.0.1:${cp[$i]}" --advertise-client-urls "http://127.0.0.1:${cp[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${pp[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pp[$i]}" \
            --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "lk-bench-${cp[0]}" \
            --heartbeat-interval 50 --election-timeout 500 >> "$WORK/etcd-m$((i + 1)).log" 2>&1 &
        PIDS+=($!)
        ETCD_PIDS+=($!)
        ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:${cp[$i]}"
    done
    for _ in $(seq 300); do
        if curl -sf "http://127.0.0.1:${cp[0]}/health" | grep -q '"health":"true"' \
            && curl -sf "http://127.0.0.1:${cp[2]}/health" | grep -q '"health":"true"'; then
            return
        fi
        sleep 0.1
    done
    echo "etcd not healthy" >&2; cat "$WORK"/etcd-m*.log >&2; exit 1
}

# ---- Latchkey nodes. start_node NAME STORE-FLAGS… — sets URL_<NAME> and PID_<NAME>; the node
# listens on a port kept across restarts (PORT_<NAME>).
start_node() {
    local name=$1 port_var="PORT_$1" port started
    shift
    port=${!port_var:-$(free_port)}
    printf -v "PORT_$name" '%s' "$port"
    : > "$WORK/$name.out"
    started=$(now_ms)
    "$BIN/latchkey" serve --data-dir "$WORK/$name" --listen "127.0.0.1:$port" --threads 1 \
        --config "$WORK/latchkey.toml" "$@" > "$WORK/$name.out" 2>> "$WORK/$name.err" &
    local pid=$!
    PIDS+=("$pid")
    printf -v "PID_$name" '%s' "$pid"
    printf -v "URL_$name" '%s' "$(wait_ready "$WORK/$name.out" 'latchkey listening on ' "$WORK/$name.err" "$pid")"
    printf -v "READY_MS_$name" '%s' "$(( $(now_ms) - started ))"
}
stop_node() { local v="PID_$1"; kill "${!v}"; wait "${!v}" 2>/dev/null || true; }
stop_etcd() { local p; for p in "${ETCD_PIDS[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done; }

# ---- HTTP helpers (curl per request: each costs a process and a TLS handshake).
op_token() { # URL CA
    curl -sf --cacert "$2" -u "bench-operator:$OPERATOR_SECRET" -d grant_type=client_credentials \
        "$1/oauth/token" | jq -r .access_token
}
create_agent() { # URL CA OP ID — prints the HTTP status
    curl -s -o /dev/null -w '%{http_code}' --cacert "$2" -H "Authorization: Bearer $3" \
        -H 'Content-Type: application/json' \
        -d "{\"entityId\":\"$4\",\"name\":\"agent $4\",\"securityProfile\":\"SHARED_SECRET\"}" "$1$API/agents"
}
board_agent() { # URL CA OP ID — creates and registers; prints the client secret
    local iat
    [ "$(create_agent "$@")" = 201 ] || { echo "create $4 failed" >&2; return 1; }
    iat=$(curl -sf --cacert "$2" -H "Authorization: Bearer $3" "$1$API/agents/$4/boarding/configuration" | jq -r .content.iat)
    curl -sf --cacert "$2" -H "Authorization: Bearer $iat" -H 'Content-Type: application/json' -d '{}' \
        "$1$API/register" | jq -r .client_secret
}
assertion() { # ID SECRET — a fresh HS256 client assertion (client_secret_jwt)
    local now h c s
    now=$(date +%s)
    h=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
    c=$(printf '{"iss":"%s","sub":"%s","aud":["southgate"],"iat":%s,"nbf":%s,"exp":%s,"jti":"%s","schemas":["urn:siemens:mindsphere:v1"],"ten":"bench"}' \
        "$1" "$1" "$now" "$now" "$((now + 60))" "$(openssl rand -hex 16)" | b64url)
    s=$(printf '%s.%s' "$h" "$c" | openssl dgst -sha256 -hmac "$2" -binary | b64url)
    printf '%s.%s.%s' "$h" "$c" "$s"
}
token_status() { # URL CA ID SECRET
    curl -s -o /dev/null -w '%{http_code}' --cacert "$2" \
        -d "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=$(assertion "$3" "$4")" \
        "$1$API/oauth/token"
}

# measure LABEL URL CA AGENTS-FILE LOADGEN-ARGS… — one load generator run, its summary in $RESULTS.
measure() {
    local label=$1 url=$2 ca=$3 agents=$4
    shift 4
    echo "== $label" >&2
    echo "$BIN/latchkey-loadgen --target URL --ca CA --credentials operator.json --agents-file FILE $* --json    # $label" >> "$COMMANDS"
    "$BIN/latchkey-loadgen" --target "$url" --ca "$ca" --credentials "$WORK/operator.json" \
        --agents-file "$agents" "$@" --json > "$WORK/one-$label.json"
    echo "$label: $(uptime)" >> "$LOADS"
    jq -c --arg lbl "$label" --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
        '{"label": $lbl, "load": $load} + del(.series)' "$WORK/one-$label.json" >> "$RESULTS"
}

# write_latency URL CA OP PREFIX N — N agent creations one after the other; prints p50 and p99 ms.
write_latency() {
    local i t
    : > "$WORK/lat.txt"
    for i in $(seq "$5"); do
        t=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --cacert "$2" -H "Authorization: Bearer $3" \
            -H 'Content-Type: application/json' \
            -d "{\"entityId\":\"$4-$i\",\"name\":\"agent $4-$i\",\"securityProfile\":\"SHARED_SECRET\"}" "$1$API/agents")
        [ "${t%% *}" = 201 ] || { echo "create $4-$i: $t" >&2; exit 1; }
        echo "${t#* }" >> "$WORK/lat.txt"
    done
    sort -g "$WORK/lat.txt" | awk '{ v[NR] = $1 * 1000 } END { printf "%.1f %.1f", v[int(NR * 0.5 + 0.5)], v[int(NR * 0.99 + 0.5)] }'
}

bench_config EdDSA
# One issuer for every node (clients reach any node under one name).
PUBLIC=(--public-url https://latchkey.bench.test)

# ================================================================ single node (redb)
start_node single
CA_single=$WORK/single/ca.pem
measure "redb single node: tokens" "$URL_single" "$CA_single" "$WORK/agents-single.jsonl" \
    --scenario token-secret-jwt --agents 200 --connections 32 --duration "$DUR" --assertion-lifetime 5s
OP=$(op_token "$URL_single" "$CA_single")
read -r W_P50_REDB W_P99_REDB <<< "$(write_latency "$URL_single" "$CA_single" "$OP" wl 200)"
measure "redb single node: writes" "$URL_single" "$CA_single" "$WORK/writes-single.jsonl" \
    --scenario token-secret-jwt --agents "$WRITES" --connections 8 --requests 100 --assertion-lifetime 5s
stop_node single

# ================================================================ two nodes on etcd
start_etcd
STORE="etcd://$ENDPOINTS"
start_node n1 --store "$STORE" "${PUBLIC[@]}"
mkdir -p "$WORK/n2"
cp "$WORK/n1/master.key" "$WORK/n2/master.key"
start_node n2 --store "$STORE" "${PUBLIC[@]}"
CA_n1=$WORK/n1/ca.pem
CA_n2=$WORK/n2/ca.pem
echo "$BIN/latchkey serve --data-dir DIR --listen 127.0.0.1:PORT --threads 1 --config latchkey.toml [--store etcd://$ENDPOINTS ${PUBLIC[*]}]    # every node" >> "$COMMANDS"

measure "etcd node 1 alone: tokens" "$URL_n1" "$CA_n1" "$WORK/agents-cluster.jsonl" \
    --scenario token-secret-jwt --agents 200 --connections 32 --duration "$DUR" --assertion-lifetime 5s
# Both nodes at once, the same agents (made through node 1): one load generator per node.
cp "$WORK/agents-cluster.jsonl" "$WORK/agents-cluster-2.jsonl"
echo "== both nodes" >&2
for n in n1 n2; do
    url_var="URL_$n" ca_var="CA_$n"
    f=$WORK/agents-cluster.jsonl; [ "$n" = n2 ] && f=$WORK/agents-cluster-2.jsonl
    "$BIN/latchkey-loadgen" --target "${!url_var}" --ca "${!ca_var}" --credentials "$WORK/operator.json" \
        --agents-file "$f" --scenario token-secret-jwt --agents 200 --connections 32 --duration "$DUR" \
        --assertion-lifetime 5s --json > "$WORK/both-$n.json" &
    PIDS+=($!)
    eval "LG_$n=\$!"
done
wait "$LG_n1"; wait "$LG_n2"
echo "both nodes at once: $(uptime)" >> "$LOADS"
echo "$BIN/latchkey-loadgen … same as node 1 alone, against node 1 and node 2 at the same time" >> "$COMMANDS"
for n in n1 n2; do
    jq -c --arg lbl "etcd, both nodes loaded: node ${n#n}" --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
        '{"label": $lbl, "load": $load} + del(.series)' "$WORK/both-$n.json" >> "$RESULTS"
done

OP=$(op_token "$URL_n1" "$CA_n1")
read -r W_P50_ETCD W_P99_ETCD <<< "$(write_latency "$URL_n1" "$CA_n1" "$OP" wl 200)"
measure "etcd node 1: writes" "$URL_n1" "$CA_n1" "$WORK/writes-cluster.jsonl" \
    --scenario token-secret-jwt --agents "$WRITES" --connections 8 --requests 100 --assertion-lifetime 5s

# ---- Revocation reach: offboard on node 1, poll node 2 until it refuses.
REACH=()
for i in 1 2 3 4 5; do
    id=reach-$i
    secret=$(board_agent "$URL_n1" "$CA_n1" "$OP" "$id")
    for _ in $(seq 200); do
        [ "$(token_status "$URL_n2" "$CA_n2" "$id" "$secret")" = 200 ] && break
        sleep 0.05
    done
    curl -sf -o /dev/null --cacert "$CA_n1" -H "Authorization: Bearer $OP" -X POST "$URL_n1$API/agents/$id/boarding/offboard"
    t0=$(now_ms)
    polls=0
    until [ "$(token_status "$URL_n2" "$CA_n2" "$id" "$secret")" = 401 ]; do
        polls=$((polls + 1))
        [ "$polls" -lt 2000 ] || { echo "node 2 never refused $id" >&2; exit 1; }
    done
    REACH+=("$(( $(now_ms) - t0 ))")
done
POLL_MS=$( { t=$(now_ms); token_status "$URL_n2" "$CA_n2" reach-1 x > /dev/null; echo $(( $(now_ms) - t )); } )

# ---- Rejoin with BIG agents: made offline in the (stopped) single node's directory, moved
# into a fresh etcd with `latchkey cluster import`, then nodes start on it.
stop_node n1
stop_node n2
stop_etcd
start_etcd
STORE="etcd://$ENDPOINTS"
python3 -c "
import sys
for i in range(int(sys.argv[1])):
    print('{\"entityId\":\"big-%06d\",\"name\":\"big agent %06d\",\"securityProfile\":\"SHARED_SECRET\"}' % (i, i))
" "$BIG" > "$WORK/big.jsonl"
echo "== $BIG agents: offline import, then cluster import" >&2
t0=$(now_ms)
"$BIN/latchkey" agent import --data-dir "$WORK/single" --config "$WORK/latchkey.toml" --tenant bench \
    --file "$WORK/big.jsonl" > "$WORK/import.out" 2> "$WORK/import.err" || { cat "$WORK/import.err" >&2; exit 1; }
IMPORT_MS=$(( $(now_ms) - t0 ))
t0=$(now_ms)
"$BIN/latchkey" cluster import --from-data-dir "$WORK/single" --store "$STORE" \
    > "$WORK/cimport.out" 2> "$WORK/cimport.err" || { cat "$WORK/cimport.err" >&2; exit 1; }
CIMPORT_MS=$(( $(now_ms) - t0 ))
{
    echo "$BIN/latchkey agent import --data-dir SINGLE --config latchkey.toml --tenant bench --file big.jsonl    # $BIG agents"
    echo "$BIN/latchkey cluster import --from-data-dir SINGLE --store etcd://…"
} >> "$COMMANDS"
for n in b1 b2; do mkdir -p "$WORK/$n"; cp "$WORK/single/master.key" "$WORK/$n/master.key"; done
start_node b1 --store "$STORE" "${PUBLIC[@]}"
JOIN_FRESH_MS=$READY_MS_b1
stop_node b1
start_node b1 --store "$STORE" "${PUBLIC[@]}"
REJOIN_MIRROR_MS=$READY_MS_b1
start_node b2 --store "$STORE" "${PUBLIC[@]}"
JOIN_SECOND_MS=$READY_MS_b2
OP=$(op_token "$URL_b2" "$WORK/b2/ca.pem")
total=$(curl -sf --cacert "$WORK/b2/ca.pem" -H "Authorization: Bearer $OP" "$URL_b2$API/agents?page=0&size=1" | jq .totalElements)
last=$(printf 'big-%06d' $((BIG - 1)))
LAST_SEEN=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$WORK/b2/ca.pem" -H "Authorization: Bearer $OP" "$URL_b2$API/agents/$last")
{
    grep 'loaded the cluster into the mirror\|caught up with the cluster' "$WORK/b1.err" | sed 's/^[^ ]* */node 1: /'
    grep 'loaded the cluster into the mirror\|caught up with the cluster' "$WORK/b2.err" | sed 's/^[^ ]* */node 2: /'
} > "$WORK/rejoin-log.txt" || true

# ================================================================ Markdown
MARK='<!-- cluster-bench.sh writes below this line; the build-cost section above is kept. -->'
if [ ! -f "$OUT" ]; then
    echo "$MARK" > "$WORK/head.md"
elif grep -qF "$MARK" "$OUT"; then
    sed -n "1,/^$(printf '%s' "$MARK" | sed 's/[][\.*^$/]/\\&/g')\$/p" "$OUT" > "$WORK/head.md"
else
    { cat "$OUT"; echo; echo "$MARK"; } > "$WORK/head.md"
fi
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
{
    cat "$WORK/head.md"
    echo
    echo "# Cluster: serving on etcd (loopback)"
    echo
    echo "Generated by \`bench/scripts/cluster-bench.sh\` on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "(commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)), release builds, etcd $("$ETCD" --version | sed -n 's/^etcd Version: //p')."
    echo
    echo '```'
    lscpu | head -4
    echo "nproc: $(nproc)"
    echo "before: $LOAD_BEFORE"
    cat "$LOADS"
    echo '```'
    echo
    echo "Everything shares the 2 cores: three etcd members, the Latchkey nodes (one server thread"
    echo "each), the load generators and whatever else ran. A load average above 2 means other work"
    echo "competed; read the numbers as relative (same run, same machine), not as capacity."
    echo
    echo "## Tokens per second"
    echo
    echo "HTTPS keep-alive, 32 connections, closed loop, SHARED_SECRET agents (client_secret_jwt),"
    echo "EdDSA access tokens, $DUR per run. The token path of an etcd node reads its local"
    echo "mirror only (no etcd round trip), behind the freshness gate (default \`cluster-freshness\` 2s);"
    echo "the \`jti\` check of an agent another node owns is forwarded to that node over HTTPS"
    echo "(batched), so about half the agents cost a node a forwarded check when two nodes run."
    echo
    echo "| run | requests | errors | tokens/s | p50 µs | p99 µs | load |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    grep -v ': writes"' "$RESULTS" | jq -r '"| \(.label) | \(.requests) | \(.errors) | \(.throughput_rps | floor) | \(.latency_us.p50) | \(.latency_us.p99) | \(.load) |"'
    echo
    echo "## Writes"
    echo
    echo "Agent creation (\`POST /agents\`), 200 one after the other with curl (a TLS handshake and a"
    echo "process each, so the floor is curl's own cost), and write throughput: the load generator"
    echo "preparing $WRITES agents with 8 clients (create + boarding configuration + register: three"
    echo "writes per agent)."
    echo
    echo "| store | create p50 ms | create p99 ms | prepared agents/s |"
    echo "| --- | ---: | ---: | ---: |"
    prep() { jq -r '.notes[] | select(test("^prepared")) | capture("\\((?<r>[0-9.]+) agents/s") | .r' "$WORK/one-$1.json" | head -1; }
    echo "| redb (single node) | $W_P50_REDB | $W_P99_REDB | $(prep 'redb single node: writes') |"
    echo "| etcd (node 1 of 2) | $W_P50_ETCD | $W_P99_ETCD | $(prep 'etcd node 1: writes') |"
    echo
    echo "## A revocation reaching the other node"
    echo
    echo "An agent offboarded on node 1; from node 1's answer until node 2 first refuses the agent a"
    echo "token (curl per poll, about $POLL_MS ms each, so this is an upper bound at that resolution),"
    echo "5 agents: ${REACH[*]} ms (median $(median "${REACH[@]}") ms)."
    echo
    echo "## Joining and rejoining with $total agents"
    echo
    echo "$BIG agents created offline in the stopped single node's directory (\`agent import"
    echo "--data-dir\`: $((IMPORT_MS / 1000)) s), moved into a fresh etcd with \`cluster import\`"
    echo "($((CIMPORT_MS / 1000)) s). Time from starting a node until its ready line (it listens only"
    echo "once its mirror caught up), process start, TLS and key ring included:"
    echo
    echo "| node | ms |"
    echo "| --- | ---: |"
    echo "| node 1, first start (empty data directory + master.key: full load) | $JOIN_FRESH_MS |"
    echo "| node 1 restarted on its mirror (nothing changed meanwhile) | $REJOIN_MIRROR_MS |"
    echo "| node 2, first start, node 1 running (full load) | $JOIN_SECOND_MS |"
    echo
    echo "Node 2 then listed $total agents and answered $LAST_SEEN for the last one imported."
    echo
    echo '```'
    cat "$WORK/rejoin-log.txt"
    echo '```'
    echo
    echo "## Notes from the load generator"
    echo
    jq -r '.notes[] | "- \(.)"' "$RESULTS" | sort -u
    echo
    echo "## Commands"
    echo
    echo '```sh'
    echo "cargo build --release --locked -p latchkey-authority -p latchkey-bench --features latchkey-authority/etcd --bins"
    echo "bench/scripts/cluster-bench.sh    # CLUSTER_DURATION=$DUR CLUSTER_WRITES=$WRITES CLUSTER_BIG=$BIG"
    cat "$COMMANDS"
    echo '```'
} > "$WORK/out.md"
mv "$WORK/out.md" "$OUT"
echo "wrote $OUT" >&2
