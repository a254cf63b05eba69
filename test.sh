#!/usr/bin/env bash
# The project's single test command: build the binaries, run the Rust tests, the JavaScript
# client's unit tests (clients/js), drive the chat page in headless Chromium against the freshly
# built roomshard-node, alone and in a local cluster (tests/browser), then check
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

section "JavaScript client: clients/js (npm test)"
if [ ! -d clients/js/node_modules/ws ]; then
  (cd clients/js && npm ci --no-audit --no-fund)
fi
(cd clients/js && npm test)

section "browser test: tests/browser (npm test)"
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi
(cd tests/browser && ROOMSHARD_NODE_BIN="$target_dir/debug/roomshard-node" \
  ROOMSHARD_OPERATOR_BIN="$target_dir/debug/roomshard-operator" npm test)

section "deploy checks: tests/deploy (Helm chart, manifests, examples, RBAC, Dockerfile)"
CARGO_TARGET_DIR="$target_dir" tests/deploy/run.sh
