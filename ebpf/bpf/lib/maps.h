/* The maps of docs/datapath.md, declared once. Every object that includes this header
 * gets the same definitions with LIBBPF_PIN_BY_NAME, so the loader pins them by name in
 * the pin directory and both objects (bpf_lxc.o, bpf_overlay.o) share one copy; the
 * maps also outlive the agent. The layouts are mirrored in ebpf/src/abi.rs. */
#ifndef MEMBRANE_MAPS_H
#define MEMBRANE_MAPS_H

#include "common.h"

/* All IPv4 addresses are in network byte order. */
struct endpoint_key {
	__u32 ip;
};

struct endpoint_value {
	__u32 ifindex;     /* host-side veth */
	__u32 identity;
	__u32 endpoint_id;
	__u8 mac[6];       /* endpoint (container-side) MAC */
	__u8 host_mac[6];  /* host-side MAC */
	__u32 flags;
};

/* Layout of struct bpf_lpm_trie_key: the prefix length comes first. */
struct ipcache_key {
	__u32 prefixlen;
	__u32 ip;
};

struct ipcache_value {
	__u32 identity;
	__u32 tunnel_endpoint; /* underlay IPv4 of the owning node, 0 when not via overlay */
	__u8 key_index;
	__u8 pad[3];
	__u32 flags;
};

struct datapath_config {
	__u32 overlay_ifindex; /* 0: overlay not configured */
	__u32 node_ip;
	__u32 flags;
	__u32 pad;
};

struct metric_value {
	__u64 packets;
	__u64 bytes;
};

_Static_assert(sizeof(struct endpoint_key) == 4, "endpoint_key size");
_Static_assert(sizeof(struct endpoint_value) == 28, "endpoint_value size");
_Static_assert(sizeof(struct ipcache_key) == 8, "ipcache_key size");
_Static_assert(sizeof(struct ipcache_value) == 16, "ipcache_value size");
_Static_assert(sizeof(struct datapath_config) == 16, "datapath_config size");
_Static_assert(sizeof(struct metric_value) == 16, "metric_value size");

#define ENDPOINTS_MAX 16384
#define IPCACHE_MAX 65536
#define METRICS_MAX 64

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ENDPOINTS_MAX);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, IPCACHE_MAX);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* the kernel requires it for LPM tries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct datapath_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, METRICS_MAX);
	__type(key, __u32);
	__type(value, struct metric_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} metrics SEC(".maps");

MB_INLINE struct endpoint_value *lookup_endpoint(__u32 ip)
{
	struct endpoint_key key = { .ip = ip };

	return bpf_map_lookup_elem(&endpoints, &key);
}

MB_INLINE struct ipcache_value *lookup_ipcache(__u32 ip)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = ip };

	return bpf_map_lookup_elem(&ipcache, &key);
}

MB_INLINE struct datapath_config *lookup_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

#endif
