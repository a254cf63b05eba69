#!/usr/bin/env bash
# The real-cluster suite: roomshard on a Kubernetes control plane built from source modules
# (kube-apiserver, kube-controller-manager, kube-scheduler, etcd, helm; testing/controlplane),
# with pods run as local processes by the process kubelet (testing/kubeharness), reached through
# loopback, per-pod network namespaces and a real nginx.
#
#   tests/kube/run.sh                 every test in tests/kube/tests
#   tests/kube/run.sh --test scale    one test file (any `cargo test` selector after the flags)
#
# Needs root (network namespaces, bind mounts), Go (first run: the control plane build), kubectl
# (.venv-deploy, from tests/deploy/run.sh --setup) and nginx (/usr/sbin/nginx). Ends with a line
# `kube: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "tests/kube: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root: pods run in network namespaces with bind mounts"
for tool in go ip mount setpriv; do
  command -v "$tool" >/dev/null || fail "needs $tool on PATH"
done
[ -x "${NGINX:-/usr/sbin/nginx}" ] || fail "needs nginx (apt-get install nginx)"
tests/deploy/run.sh --setup

ROOMSHARD_CONTROLPLANE_BIN=$(testing/controlplane/build.sh | tail -n 1)
export ROOMSHARD_CONTROLPLANE_BIN
export KUBECTL="$PWD/.venv-deploy/bin/kubectl"
cargo build --workspace --bins

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# One test at a time: each starts its own control plane and pods on a 2-core machine.
cargo test -p kube-e2e --no-fail-fast "$@" -- --test-threads=1 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
  failed=1 # the build or a test binary failed outside any test
fi
echo "kube: $passed passed, $failed failed"
exit "$status"
