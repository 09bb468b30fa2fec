#!/usr/bin/env bash
# Runs every test Latchkey has, installing what they need first. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end tests in tests/ drive the real binary: build it first.
cargo build --locked -p latchkey-authority --bin latchkey
cargo test --locked --workspace
