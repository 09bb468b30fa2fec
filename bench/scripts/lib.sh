# Shared by the bench scripts (sourced, not run): the preflight checks, the work directory and
# operator client, the bench configuration, and one `latchkey serve` per measurement.
# Callers set BIN (the release binaries) before calling these.

# bench_require NAME TOOL… — exits 2 unless every TOOL is on PATH and the release binaries exist.
bench_require() {
    local name=$1 tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$name: needs $tool" >&2; exit 2; }
    done
    [ -x "$BIN/latchkey" ] && [ -x "$BIN/latchkey-loadgen" ] || {
        echo "$name: build first: cargo build --release --locked -p latchkey-authority -p latchkey-bench --bins" >&2
        exit 2
    }
}

# bench_workdir [DIR] — sets WORK (DIR, kept and reused; or a temporary directory removed at
# exit), DATA, AGENTS, RESULTS, COMMANDS and LOADS (the last three emptied), writes the operator
# client's credentials to $WORK/operator.json (reusing DIR's) and sets OPERATOR_SECRET. The EXIT
# trap stops the server and the peer (PEER_PID) if they still run.
bench_workdir() {
    if [ -n "${1:-}" ]; then
        WORK=$1
        KEEP_WORK=1
        mkdir -p "$WORK"
    else
        WORK=$(mktemp -d)
        KEEP_WORK=
    fi
    DATA=$WORK/data
    AGENTS=$WORK/agents.jsonl
    RESULTS=$WORK/results.jsonl
    COMMANDS=$WORK/commands.txt
    LOADS=$WORK/loads.txt
    LK_PID=
    PEER_PID=
    trap bench_cleanup EXIT
    : > "$RESULTS"; : > "$COMMANDS"; : > "$LOADS"
    if [ -s "$WORK/operator.json" ]; then
        OPERATOR_SECRET=$(jq -r .client_secret "$WORK/operator.json")
    else
        OPERATOR_SECRET=$(openssl rand -hex 24)
        printf '{"client_id":"bench-operator","client_secret":"%s"}\n' "$OPERATOR_SECRET" > "$WORK/operator.json"
    fi
}

bench_cleanup() {
    if [ -n "${LK_PID:-}" ]; then kill "$LK_PID" 2>/dev/null || true; wait "$LK_PID" 2>/dev/null || true; fi
    if [ -n "${PEER_PID:-}" ]; then kill "$PEER_PID" 2>/dev/null || true; wait "$PEER_PID" 2>/dev/null || true; fi
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}

# bench_config ALG — writes $WORK/latchkey.toml: leeway 1 s, and tenant `bench` whose access
# tokens use ALG with the operator client `bench-operator` in it (a Usercube-style hashed
# secret: base64 of SHA-256, see the operator docs).
bench_config() {
    printf '[tokens]\nleeway = "1s"\n\n[[tenants]]\nid = "bench"\ntoken-alg = "%s"\n\n[[clients]]\nidentifier = "bench-operator"\nhashed-secret = "%s"\nprofile = "Administrator"\ntenant = "bench"\n' \
        "$1" "$(printf %s "$OPERATOR_SECRET" | openssl dgst -sha256 -binary | base64)" > "$WORK/latchkey.toml"
}

# serve_latchkey SERVE-FLAGS… — starts `latchkey serve` on $DATA, 127.0.0.1:0 and
# $WORK/latchkey.toml with the given flags; sets LK_PID, and LK_URL once the ready line appears.
serve_latchkey() {
    "$BIN/latchkey" serve --data-dir "$DATA" --listen 127.0.0.1:0 --config "$WORK/latchkey.toml" "$@" \
        > "$WORK/lk.out" 2> "$WORK/lk.err" &
    LK_PID=$!
    LK_URL=$(wait_ready "$WORK/lk.out" 'latchkey listening on ' "$WORK/lk.err" "$LK_PID")
}

# wait_ready OUT PREFIX ERR [PID] — waits for a line starting with PREFIX in the file OUT and
# prints the rest of it (the URL); otherwise shows the file ERR and fails. Waits at most
# BENCH_READY_TIMEOUT seconds (default 600: a server opening a store of a million agents
# loads them before it listens), and stops at once if process PID has exited.
wait_ready() {
    local out=$1 prefix=$2 err=$3 pid=${4:-} url
    local deadline=$(( $(date +%s) + ${BENCH_READY_TIMEOUT:-600} ))
    until grep -qs "^$prefix" "$out"; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then break; fi
        [ "$(date +%s)" -lt "$deadline" ] || break
        sleep 0.1
    done
    url=$(sed -n "s|^$prefix||p" "$out" 2>/dev/null)
    [ -n "$url" ] || { echo "no ready line ($prefix) in $out" >&2; cat "$err" >&2; return 1; }
    printf '%s' "$url"
}

stop_latchkey() { kill "$LK_PID"; wait "$LK_PID" 2>/dev/null || true; LK_PID=; }
