#!/usr/bin/env bash
# Benchmarks that compare Membrane with a reference system side by side, in one run.
#   scripts/bench.sh registry [--clients N] [--ops N] [--via all|leader]   Raft registry vs a 3-member etcd
#   scripts/bench.sh gossip [N ...]   convergence and failure detection for N in-process nodes (default 10 50 100)
#   scripts/bench.sh datapath [--runs N] [--round-trips N] [--seconds N] [--baseline-only]
#       endpoint TCP throughput (iperf3) and 64-byte ping-pong latency, Membrane's BPF datapath
#       vs a plain bridge (same node) and a plain kernel VXLAN (across nodes)
#   scripts/bench.sh policy [--rules 10,1000,10000] [--seconds N] [--runs N] [--round-trips N] [--peers N] [--iptables PROGRAM]
#       connection rate and 64-byte ping-pong latency under N-rule policies, Membrane's policy
#       map vs equivalent iptables chains (one rule per peer and port) in the same run
#   scripts/bench.sh tunnel [--runs N] [--round-trips N] [--seconds N] [--baseline-only] [--idle-only]
#       1- and 4-stream TCP, 64-byte ping-pong p50/p99 and CPU s/GB between endpoints on two
#       nodes: kernel VXLAN, Membrane VXLAN, Membrane encrypted and boringtun (user-space
#       WireGuard), idle and with two nice-19 busy loops, with the raw cipher rate as the limit
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
  policy)
    scripts/deps.sh
    # The reference system; bpftool counts the entries of Membrane's policy map.
    command -v iptables-restore >/dev/null || { apt-get update -qq && apt-get install -y -qq iptables >/dev/null; }
    command -v bpftool >/dev/null || { apt-get update -qq && apt-get install -y -qq bpftool >/dev/null; } ;;
  tunnel)
    scripts/deps.sh wireguard-tools
    # The peer to beat: boringtun's CLI from crates.io, built once into target/tools.
    if ! command -v boringtun-cli >/dev/null && [[ ! -x target/tools/bin/boringtun-cli ]]; then
      cargo install boringtun-cli --locked --root target/tools
    fi ;;
  gossip)
    shift
    exec cargo run --release -p membrane-gossip --example gossip-bench -- "$@" ;;
  *) echo "usage: $0 registry [--clients N] [--ops N] [--via all|leader] | $0 gossip [N ...] | $0 datapath [--runs N] [--round-trips N] [--seconds N] [--baseline-only] | $0 policy [--rules 10,1000,10000] [--seconds N] [--runs N] [--round-trips N] [--peers N] [--iptables PROGRAM] | $0 tunnel [--runs N] [--round-trips N] [--seconds N] [--baseline-only] [--idle-only]" >&2; exit 2 ;;
esac
if [[ $1 == policy || $1 == tunnel ]]; then
  cargo build --release -p membrane-jepsen -p membrane --bins
else
  cargo build --release --workspace --bins
fi
export MEMBRANE_BIN="$PWD/target/release/membrane"
exec target/release/membrane-lab bench "$@"
