#!/usr/bin/env bash
# Run roomshard on this machine, no Kubernetes needed: builds the binaries, then starts a local
# cluster of roomshard-node processes on loopback (3 by default) and prints their chat pages.
#   ./run.sh                  3 nodes, admin/table port 7700
#   ./run.sh --nodes 5        any `roomshard-operator local` flag works
# Ctrl-C stops every node.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --bins
exec target/release/roomshard-operator local "$@"
