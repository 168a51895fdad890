/* The `config` map: the one datapath configuration record the agent writes. */
#ifndef MEMBRANE_CONFIG_H
#define MEMBRANE_CONFIG_H

#include "common.h"

struct datapath_config {
	__u32 overlay_ifindex; /* 0: overlay not configured */
	__u32 node_ip;
	__u32 flags;           /* CFG_F_* */
	__u32 events_per_sec;  /* event budget per CPU (and burst); 0 = EVENTS_PER_SEC_DEFAULT */
};

#define CFG_F_TRACE (1U << 0) /* emit a trace event for every packet forwarded */
#define EVENTS_PER_SEC_DEFAULT 1000

_Static_assert(sizeof(struct datapath_config) == 16, "datapath_config size");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct datapath_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

MB_INLINE struct datapath_config *lookup_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

#endif
