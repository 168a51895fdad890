#!/usr/bin/env bash
# Runs every test: unit tests, and the lab tests that start real agents in network
# namespaces (they need root). Installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "the lab tests create network namespaces: run as root (sudo $0)" >&2
  exit 1
fi
scripts/deps.sh
# The lab tests run the real `membrane` binary; build it first.
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
