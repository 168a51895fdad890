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
# ... and imports the well-known types (google/protobuf/*.proto) from libprotobuf-dev.
[[ -f /usr/include/google/protobuf/timestamp.proto ]] || need+=(libprotobuf-dev)
want nsenter util-linux         # the lab starts agents in host namespaces without a private mount namespace
# The BPF datapath: ebpf/build.rs compiles ebpf/bpf/*.c with clang -target bpf against
# libbpf's headers (bpf_helpers.h) and the kernel's UAPI headers.
want clang clang
want llvm-objdump llvm
[[ -f /usr/include/bpf/bpf_helpers.h ]] || need+=(libbpf-dev)
[[ -f /usr/include/linux/bpf.h ]] || need+=(linux-libc-dev)
[[ -d /usr/include/x86_64-linux-gnu/asm || -d /usr/include/asm ]] || need+=(linux-libc-dev)
want iperf3 iperf3              # the datapath benchmark and demo traffic
want ping iputils-ping          # ebpf/tests/policy.rs: ICMP echo through conntrack and policy
want bpftool bpftool            # ebpf/tests/datapath.rs creates an incompatible pinned map; bench policy counts entries
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
