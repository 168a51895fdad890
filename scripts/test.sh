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
# One test at a time: lab tests time failure detection and autopilot against the issue's
# bounds (3 s, 15 s), and two 5-agent labs sharing 2 cores eat into them.
cargo test --workspace --no-fail-fast -- --test-threads=1
