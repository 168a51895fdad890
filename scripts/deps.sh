#!/usr/bin/env bash
# Installs the system packages Membrane's scripts need, with apt-get, only when missing.
# Usage: scripts/deps.sh [extra-package ...]   (sourced or run)
set -euo pipefail

need=()
want() { # want COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || need+=("$2")
}
want ip iproute2
want nft nftables   # the lab cuts hosts off with nftables rules on its bridge
want bridge iproute2
want pkill procps
want protoc protobuf-compiler   # etcd-client (benchmark) compiles its protos with protoc
for extra in "$@"; do
  case "$extra" in
    etcd) want etcd etcd-server; want etcdctl etcd-client ;;
    *) dpkg -s "$extra" >/dev/null 2>&1 || need+=("$extra") ;;
  esac
done

if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages: ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
