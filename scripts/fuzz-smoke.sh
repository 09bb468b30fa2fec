#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each briefly (default 10 s; FUZZ_SECONDS overrides).
# CI runs this; a crash fails the script and leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

# cargo-fuzz needs nightly flags (-Z sanitizer); this stable toolchain allows them this way.
export RUSTC_BOOTSTRAP=1
seconds="${FUZZ_SECONDS:-10}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cargo fuzz build
for target in $(cargo fuzz list); do
    echo "== fuzz ${target} for ${seconds}s"
    mkdir -p "corpus/${target}" "seeds/${target}"
    cargo fuzz run "${target}" "corpus/${target}" "seeds/${target}" -- -max_total_time="${seconds}"
done
