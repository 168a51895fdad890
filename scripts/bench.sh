#!/usr/bin/env bash
# Benchmarks that compare Membrane with a reference system side by side, in one run.
#   scripts/bench.sh registry [--clients N] [--ops N] [--via all|leader]   Raft registry vs a 3-member etcd
#   scripts/bench.sh gossip [N ...]   convergence and failure detection for N in-process nodes (default 10 50 100)
#   scripts/bench.sh datapath [--runs N] [--round-trips N] [--seconds N] [--baseline-only]
#       endpoint TCP throughput (iperf3) and 64-byte ping-pong latency, Membrane's BPF datapath
#       vs a plain bridge (same node) and a plain kernel VXLAN (across nodes)
# Release builds; figures go to docs/benchmarks.md by hand, with the command that made them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "benchmarks create network namespaces: run as root (sudo $0)" >&2
  exit 1
fi
case "${1:-}" in
  registry) scripts/deps.sh etcd ;;
  datapath) scripts/deps.sh ;;
  gossip)
    shift
    exec cargo run --release -p membrane-gossip --example gossip-bench -- "$@" ;;
  *) echo "usage: $0 registry [--clients N] [--ops N] [--via all|leader] | $0 gossip [N ...] | $0 datapath [--runs N] [--round-trips N] [--seconds N] [--baseline-only]" >&2; exit 2 ;;
esac
cargo build --release --workspace --bins
export MEMBRANE_BIN="$PWD/target/release/membrane"
exec target/release/membrane-lab bench "$@"
