#!/usr/bin/env bash
# The project's single test command: build the binaries, run the Rust tests, drive the chat
# page in headless Chromium against the freshly built roomshard-node (tests/browser), then check
# the deployment files: Helm chart, manifests, examples, RBAC, Dockerfile (tests/deploy).
# Needs: cargo, node + npm, Chromium at /usr/bin/chromium (or $CHROMIUM), python3 with venv.
# Stops at the first failure.
set -euo pipefail
cd "$(dirname "$0")"

section() { printf '\n======== %s ========\n' "$*"; }

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"

section "build: cargo build --workspace --bins"
cargo build --workspace --bins

section "rust tests: cargo test --workspace"
cargo test --workspace

section "browser test: tests/browser (npm test)"
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi
(cd tests/browser && ROOMSHARD_NODE_BIN="$target_dir/debug/roomshard-node" npm test)

section "deploy checks: tests/deploy (Helm chart, manifests, examples, RBAC, Dockerfile)"
CARGO_TARGET_DIR="$target_dir" tests/deploy/run.sh
