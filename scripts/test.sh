#!/usr/bin/env bash
# Runs every test Latchkey has, installing what they need first. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end tests in tests/ drive the real binaries (`latchkey`, `latchkey-loadgen`):
# build them first.
cargo build --locked -p latchkey-authority -p latchkey-bench --bins
# The mutual-TLS tests also use real curl and openssl clients.
if ! command -v curl >/dev/null || ! command -v openssl >/dev/null; then
    apt-get update -qq && apt-get install -y -qq curl openssl
fi
# The default build stays free of tokio (the etcd engine's runtime) and so of tonic.
tokio_deps="$(cargo tree --locked -p latchkey-authority -e normal | grep -c tokio || true)"
if [ "$tokio_deps" != 0 ]; then
    echo "latchkey-authority without features depends on tokio ($tokio_deps lines of cargo tree)" >&2
    exit 1
fi
# The Node SDK interop test (tests/tests/onboarding.rs) runs the pinned MindConnect SDK.
npm ci --prefix tests/interop --no-audit --no-fund
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --locked --workspace 2>&1 | tee "$log"
# The appliance package builds from the dev binary above and holds the binary, the unit, the
# conffile and the man pages; the unit passes `systemd-analyze verify` (installs cargo-deb and
# systemd if missing). The release package: `scripts/package-deb.sh` without --check.
scripts/package-deb.sh --check
# Every fuzz target builds and survives a short run (installs cargo-fuzz if missing).
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" scripts/fuzz-smoke.sh
# The cluster tests: a `latchkey` built with the etcd engine against a 3-member etcd cluster
# they start (Debian's etcd-server; etcd-client's build needs protoc). Last, because the
# feature build replaces the dev binary the steps above use.
if ! command -v etcd >/dev/null || ! command -v protoc >/dev/null; then
    apt-get update -qq && apt-get install -y -qq etcd-server protobuf-compiler
fi
# The gates of .ci/run, for the code only the feature compiles.
cargo clippy --locked -p latchkey-authority -p latchkey-tests --all-targets \
    --features latchkey-authority/etcd,latchkey-tests/etcd -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps -p latchkey-authority --features etcd --quiet
# The authority's unit tests again with the engine compiled in (the engine's own tests start a
# one-member etcd).
LATCHKEY_REQUIRE_ETCD=1 cargo test --locked -p latchkey-authority --features etcd --lib 2>&1 | tee -a "$log"
cargo build --locked -p latchkey-authority --features etcd --bins
LATCHKEY_REQUIRE_ETCD=1 cargo test --locked -p latchkey-tests --features etcd -- cluster:: 2>&1 | tee -a "$log"
# One closing line with the totals of every cargo test binary above.
grep -E '^test result:' "$log" | awk '{
    for (i = 1; i < NF; i++) { if ($(i + 1) ~ /^passed;/) p += $i; if ($(i + 1) ~ /^failed;/) f += $i }
} END { printf "tests: %d passed, %d failed\n", p, f }'
