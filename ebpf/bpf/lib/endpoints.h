/* The `endpoints` map: the local endpoints by address (docs/datapath.md, "BPF maps"). */
#ifndef MEMBRANE_ENDPOINTS_H
#define MEMBRANE_ENDPOINTS_H

#include "common.h"

struct endpoint_key {
	__u32 ip;
};

struct endpoint_value {
	__u32 ifindex;     /* host-side veth */
	__u32 identity;
	__u32 endpoint_id; /* < 65536: policy and conntrack keep 16 bits */
	__u8 mac[6];       /* endpoint (container-side) MAC */
	__u8 host_mac[6];  /* host-side MAC */
	__u32 flags;       /* EP_F_*: which directions enforce policy */
};

/* endpoint_value.flags: which directions of the endpoint enforce policy. A direction
 * that is not enforced allows what no policy entry denies. */
#define EP_F_INGRESS_ENFORCED (1U << 0)
#define EP_F_EGRESS_ENFORCED (1U << 1)

_Static_assert(sizeof(struct endpoint_key) == 4, "endpoint_key size");
_Static_assert(sizeof(struct endpoint_value) == 28, "endpoint_value size");

#define ENDPOINTS_MAX 16384

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ENDPOINTS_MAX);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

MB_INLINE struct endpoint_value *lookup_endpoint(__u32 ip)
{
	struct endpoint_key key = { .ip = ip };

	return bpf_map_lookup_elem(&endpoints, &key);
}

#endif
