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

echo "== tests"
cargo nextest run --workspace
