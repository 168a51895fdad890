#!/usr/bin/env bash
# The main job: a local 3-node Membrane cluster in network namespaces on this machine.
# It creates the cluster, joins two nodes with tokens, prints `membrane status` from each
# host, attaches two endpoints per node with membrane-cni (app=web, app=db), shows TCP and UDP
# between all of them as a matrix plus `membrane endpoint list` and `membrane bpf ipcache
# list`, imports a policy (db accepts only web on TCP 7000) and shows the matrix under it,
# `membrane policy explain` and the drops in `membrane monitor`, and removes everything
# when it ends. Pass --keep to leave it running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "the demo creates network namespaces: run as root (sudo $0)" >&2
  exit 1
fi
scripts/deps.sh
cargo build --workspace --bins
exec target/debug/membrane-lab demo "$@"
