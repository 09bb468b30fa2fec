#!/usr/bin/env bash
# Builds the appliance package target/debian/latchkey_<version>_<arch>.deb with cargo-deb
# (metadata in authority/Cargo.toml: the binary, the systemd unit packaging/latchkey.service,
# the conffile /etc/latchkey/latchkey.toml and the man pages), then checks it: its contents,
# its conffiles, and the unit with `systemd-analyze verify`.
#
# Usage: scripts/package-deb.sh           release build: the package to install (a cold
#                                         release build takes about 9 minutes on 2 cores)
#        scripts/package-deb.sh --check   packages the dev binary instead (`cargo deb
#                                         --no-build --profile dev --fast`): checks the
#                                         packaging in seconds; what scripts/test.sh runs
#                                         (cold, with cargo-deb to install: about 2.5 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
    "") profile=release; build=(--release) ;;
    --check) profile=dev; build=() ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
out=$([ "$profile" = dev ] && echo debug || echo release)

# Pinned: cargo-deb warns that it will refuse the dev profile the check uses.
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version '~3.8'
cargo build --locked "${build[@]}" -p latchkey-authority --bin latchkey
bin=target/$out/latchkey

# Man pages from the clap definitions (the hidden `latchkey man`), fresh each time.
rm -rf target/man
"$bin" man --out-dir target/man

deb_args=(--locked -p latchkey-authority --no-build)
[ "$profile" = dev ] && deb_args+=(--profile dev --fast)
deb=$(cargo deb "${deb_args[@]}" | tail -n 1)
[ -f "$deb" ] || { echo "package-deb: cargo deb did not name a package: $deb" >&2; exit 1; }
echo "package-deb: built $deb" >&2

# The package holds what the appliance needs.
contents=$(dpkg-deb --contents "$deb")
for path in ./usr/bin/latchkey ./lib/systemd/system/latchkey.service \
    ./etc/latchkey/latchkey.toml ./usr/share/man/man1/latchkey.1 ./usr/share/man/man1/latchkey-serve.1; do
    grep -Eq " ${path//./\\.}(\.gz)?\$" <<< "$contents" || {
        echo "package-deb: $deb lacks $path" >&2
        exit 1
    }
done
dpkg-deb --info "$deb" conffiles | grep -qx /etc/latchkey/latchkey.toml || {
    echo "package-deb: /etc/latchkey/latchkey.toml is not a conffile of $deb" >&2
    exit 1
}

# The unit: systemd-analyze checks every directive. It also wants ExecStart's binary to exist,
# so it verifies a copy pointing at the binary just built (and skips the man: link check,
# which needs the package installed).
if ! command -v systemd-analyze >/dev/null && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq systemd >/dev/null) ||
        echo "package-deb: could not install systemd (for systemd-analyze)" >&2
fi
if command -v systemd-analyze >/dev/null; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    sed "s|/usr/bin/latchkey|$PWD/$bin|" packaging/latchkey.service > "$tmp/latchkey.service"
    systemd-analyze verify --man=no "$tmp/latchkey.service"
    echo "package-deb: systemd-analyze verify: ok" >&2
else
    echo "package-deb: systemd-analyze not available: unit not verified" >&2
fi
echo "$deb"
