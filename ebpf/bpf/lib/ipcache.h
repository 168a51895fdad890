/* The `ipcache` map: the identity (and owning node) of every known prefix
 * (docs/datapath.md, "BPF maps"). */
#ifndef MEMBRANE_IPCACHE_H
#define MEMBRANE_IPCACHE_H

#include "common.h"

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
	__u32 flags;       /* reserved, 0 */
};

_Static_assert(sizeof(struct ipcache_key) == 8, "ipcache_key size");
_Static_assert(sizeof(struct ipcache_value) == 16, "ipcache_value size");

#define IPCACHE_MAX 65536

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, IPCACHE_MAX);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* the kernel requires it for LPM tries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

MB_INLINE struct ipcache_value *lookup_ipcache(__u32 ip)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = ip };

	return bpf_map_lookup_elem(&ipcache, &key);
}

#endif
