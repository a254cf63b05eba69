#!/usr/bin/env bash
# The project's single test command. On a fresh Debian machine it first installs what it lacks
# (Chromium and nginx from Debian, the npm and Python packages, nightly Rust and cargo-fuzz, the
# Kubernetes control plane built from source modules), then runs everything:
#   Rust unit and integration tests (cargo test), a bounded fuzzing run (fuzz/run.sh, 60 s per
#   target), the JavaScript client's tests (clients/js),
#   the chat page in headless Chromium (tests/browser), the deployment checks (tests/deploy), and
#   the real-cluster suite (tests/kube: helm, kubectl, the operator and node pods on a real
#   kube-apiserver, controller manager and scheduler).
# Needs, and says so when missing: root, cargo, go, node and npm, python3.
# Stops at the first failure.
set -euo pipefail
cd "$(dirname "$0")"

section() { printf '\n======== %s ========\n' "$*"; }
fail() { echo "test.sh: $*" >&2; exit 1; }

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"

section "setup: what this machine lacks"
[ "$(id -u)" = 0 ] || fail "run as root: the real-cluster suite makes network namespaces and mounts"
for tool in cargo go node npm python3 ip mount setpriv; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
missing=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
[ -x "${NGINX:-/usr/sbin/nginx}" ] || missing+=(nginx)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing from Debian: ${missing[*]}"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
[ -d clients/js/node_modules/ws ] || (cd clients/js && npm ci --no-audit --no-fund)
[ -d tests/browser/node_modules/playwright-core ] || (cd tests/browser && npm ci --no-audit --no-fund)
tests/deploy/run.sh --setup
# The fuzz step (fuzz/run.sh) needs nightly Rust and cargo-fuzz.
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version '^0.13' --locked
section "setup: the Kubernetes control plane (testing/controlplane/build.sh; built once, then reused)"
ROOMSHARD_CONTROLPLANE_BIN=$(testing/controlplane/build.sh | tail -n 1)
export ROOMSHARD_CONTROLPLANE_BIN

section "build: cargo build --workspace --bins"
cargo build --workspace --bins

section "rust tests: cargo test --workspace (the real-cluster suite runs last, below)"
cargo test --workspace --exclude kube-e2e

section "fuzz: fuzz/run.sh (3 targets, ${ROOMSHARD_FUZZ_SECONDS:-60} s each)"
fuzz/run.sh "${ROOMSHARD_FUZZ_SECONDS:-60}"

section "JavaScript client: clients/js (npm test)"
(cd clients/js && npm test)

section "browser test: tests/browser (npm test)"
(cd tests/browser && ROOMSHARD_NODE_BIN="$target_dir/debug/roomshard-node" \
  ROOMSHARD_OPERATOR_BIN="$target_dir/debug/roomshard-operator" npm test)

section "deploy checks: tests/deploy (Helm chart, manifests, examples, RBAC, Dockerfile)"
CARGO_TARGET_DIR="$target_dir" tests/deploy/run.sh

section "real cluster: tests/kube/run.sh"
tests/kube/run.sh
