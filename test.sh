#!/usr/bin/env bash
# The whole test suite. Installs what it needs (Debian packages, the upstream
# Kubernetes build, both cached and idempotent), removes any fleet left on this
# machine, then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "== formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== build"
cargo build --workspace --all-targets
YURT=./target/debug/yurt

echo "== removing fleets left on this machine"
"$YURT" down --all --purge
trap '"$YURT" down --all --purge >/dev/null 2>&1 || true' EXIT

echo "== Debian packages and upstream Kubernetes"
"$YURT" setup

# Tests that bring up fleets of their own (nextest's own-fleet group, one at a time).
OWN='binary(adoption) | binary(devices) | binary(fault_fleets) | binary(hosts) | binary(registry_faults) | binary(tunnel) | binary(autonomy) | binary(eviction) | binary(upgrades) | binary(pod_identity) | binary(wan_soak) | (package(yurt) & binary(cli))'
# The five-minute outage, the ten-minute WAN soak and the devices' offline test mostly
# wait: they run beside the other own-fleet tests (one after the other: nextest's
# own-fleet group).
LONG_CUT='(binary(autonomy) & test(five_minutes)) | binary(wan_soak) | binary(devices)'
status=0

echo "== tests: unit tests and the shared fleet"
cargo nextest run --workspace -E "not ($OWN)" || status=1
# The shared fleet would only idle from here on, taking CPU from the fleets below.
"$YURT" down --data-dir /var/lib/yurt-test/shared --purge

echo "== tests: fleets of their own"
cargo nextest run --workspace -E "$LONG_CUT" &
long_cut=$!
cargo nextest run --workspace -E "($OWN) & not ($LONG_CUT)" || status=1
wait "$long_cut" || status=1
exit "$status"
