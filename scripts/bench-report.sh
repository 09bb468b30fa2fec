#!/usr/bin/env bash
# Regenerates bench/RESULTS.md: runs every benchmark (core criterion benches, the store bench,
# the server bench script, the load generator's scenarios) and assembles the report from the
# sections in bench/results/*.md, with the machine, the date and the load.
#
# Sections: core.md, store.md, server.md and allocator.md are curated by the benches' owners from the raw
# output this script saves under target/bench-report/ (their headers name the exact commands);
# onboarding.md, mtls.md, loadgen.md and abuse.md are written by
# bench/scripts/onboarding-bench.sh, mtls-bench.sh, loadgen-report.sh and abuse-bench.sh;
# footprint.md is curated from bench/scripts/footprint.sh (idle RSS). A section that does not
# exist yet is listed as missing, not invented.
#
# Measure on a quiet machine: the script warns when the 1-minute load average is above 1.5.
# `--assemble-only` skips the runs and only rebuilds RESULTS.md from the sections.
set -euo pipefail
cd "$(dirname "$0")/.."

RAW=target/bench-report
mkdir -p "$RAW" bench/results
load() { cut -d' ' -f1 /proc/loadavg; }

if [ "${1:-}" != --assemble-only ]; then
    if awk -v l="$(load)" 'BEGIN { exit !(l > 1.5) }'; then
        echo "bench-report: load average $(load) > 1.5: results will be noisy (recorded in the report)" >&2
    fi
    cargo build --release --locked -p latchkey-authority -p latchkey-bench --bins
    echo "== core criterion benches (load $(load))" >&2
    cargo bench --locked -p latchkey-bench --bench core 2>&1 | tee "$RAW/core.log"
    echo "== store bench (load $(load))" >&2
    cargo bench --locked -p latchkey-bench --bench store 2>&1 | tee "$RAW/store.log"
    if [ -x bench/scripts/server-bench.sh ]; then
        echo "== server bench (load $(load))" >&2
        bench/scripts/server-bench.sh 2>&1 | tee "$RAW/server.log"
    else
        echo "bench-report: bench/scripts/server-bench.sh not found; server section not rerun" >&2
    fi
    echo "== onboarding token bench (load $(load))" >&2
    bench/scripts/onboarding-bench.sh 2>&1 | tee "$RAW/onboarding.log"
    echo "== mutual TLS bench (load $(load))" >&2
    bench/scripts/mtls-bench.sh 2>&1 | tee "$RAW/mtls.log"
    echo "== load generator scenarios (load $(load))" >&2
    bench/scripts/loadgen-report.sh 2>&1 | tee "$RAW/loadgen.log"
    echo "== the transport under abuse (load $(load))" >&2
    bench/scripts/abuse-bench.sh 2>&1 | tee "$RAW/abuse.log"
    echo "== idle footprint (load $(load))" >&2
    LATCHKEY_BIN_DIR=target/release bench/scripts/footprint.sh 2>&1 | tee "$RAW/footprint.log"
fi

{
    echo "# Latchkey benchmark results"
    echo
    echo "Regenerate with \`scripts/bench-report.sh\` (about half an hour; raw output in"
    echo "\`target/bench-report/\`). Assembled $(date -u +%Y-%m-%dT%H:%M:%SZ), commit"
    echo "$(git rev-parse --short HEAD 2>/dev/null || echo unknown), load average $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "## Machine"
    echo
    echo '```'
    echo "nproc: $(nproc)"
    lscpu | grep -E '^(Architecture|Model name|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|L2 cache|L3 cache|Flags)' \
        | sed 's/^Flags: *\(.\{0,120\}\).*/Flags: \1…/'
    free -g | sed -n '1,2p'
    echo "rustc: $(rustc --version)"
    echo "node: $(node --version 2>/dev/null || echo none)"
    echo '```'
    for section in core store server onboarding mtls loadgen abuse allocator footprint cluster; do
        echo
        if [ -f "bench/results/$section.md" ]; then
            # Demote the section's headings one level under this document's title (not lines
            # inside code fences, where `#` starts a shell comment).
            awk '/^```/ { fence = !fence } !fence && /^#/ { $0 = "#" $0 } { print }' \
                "bench/results/$section.md"
        else
            echo "## $section"
            echo
            echo "_Missing: bench/results/$section.md has not been written yet._"
        fi
    done
} > bench/RESULTS.md
echo "wrote bench/RESULTS.md" >&2
