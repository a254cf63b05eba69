#!/usr/bin/env bash
# Builds the fuzz targets (cargo fuzz: libFuzzer, AddressSanitizer, nightly Rust) and runs each
# for a bounded time from the committed corpus, failing on any crash, panic, leak, timeout or
# oversized allocation. One line per target on stdout says how it went.
#
#   fuzz/run.sh [SECONDS] [TARGET...]   SECONDS per target (default 60); every target by default
#   fuzz/run.sh 1800                    the long form: half an hour per target
#   fuzz/run.sh 0                       only replay the committed corpus, each input once
#
# What a run finds worth keeping goes to a scratch corpus ($ROOMSHARD_FUZZ_WORK, else a
# temporary directory removed at the end), never into fuzz/corpus/: the tree stays clean. A
# crashing input is written to fuzz/artifacts/<target>/; docs/fuzzing.md says how to replay it.
# Build output goes to $ROOMSHARD_FUZZ_TARGET_DIR, else ~/.cache/roomshard/fuzz-target, which
# survives clean clones on one machine (the fuzz build's flags differ from the workspace's, so it
# cannot share target/).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
[ "$#" -gt 0 ] && shift
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "fuzz/run.sh: SECONDS must be a whole number, not $seconds" >&2; exit 2; }
all_targets=(client_frame peer_frame assignment_table)
targets=("${@:-${all_targets[@]}}")

# Limits: no single allocation above malloc_limit (the largest legitimate one is an assignment
# table of the maximum shard count, 1 Mi owners of 16 bytes), no process above rss_limit, no
# input slower than timeout (AddressSanitizer's quarantine alone keeps 256 MB resident).
malloc_limit_mb=64
rss_limit_mb=2048
timeout_s=10

target_dir="${ROOMSHARD_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/roomshard/fuzz-target}"
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
cargo +nightly fuzz build --target-dir "$target_dir" >&2

scratch="${ROOMSHARD_FUZZ_WORK:-}"
if [ -z "$scratch" ]; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
fi

failed=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "artifacts/$t" "corpus/$t"
  log="$scratch/$t.log"
  started=$SECONDS
  status=0
  # libFuzzer reads -max_total_time=0 as "no limit": 0 seconds means one pass over the corpus.
  if [ "$seconds" -eq 0 ]; then bound=(-runs=0); else bound=(-max_total_time="$seconds"); fi
  "$target_dir/$triple/release/$t" "$scratch/$t" "corpus/$t" \
    "${bound[@]}" -rss_limit_mb="$rss_limit_mb" -malloc_limit_mb="$malloc_limit_mb" \
    -timeout="$timeout_s" -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1 || true)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2 || true)"
  corp="$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -n 1 | cut -d' ' -f2 || true)"
  took=$((SECONDS - started))
  if [ "$status" -eq 0 ]; then
    echo "fuzz $t: ok, ${took} s, ${runs:-?} runs, coverage ${cov:-?} edges, corpus ${corp:-?}"
  else
    failed=1
    artifact="$(grep -o "artifacts/$t/[a-z-]*[0-9a-f]*" "$log" | tail -n 1 || true)"
    echo "fuzz $t: FAILED (exit $status) after ${took} s; input: fuzz/${artifact:-artifacts/$t/?}; log below"
    grep -v '^#[0-9]' "$log" | tail -n 40 >&2
  fi
done
exit "$failed"
