/* The `config` map: the one datapath configuration record the agent writes. */
#ifndef MEMBRANE_CONFIG_H
#define MEMBRANE_CONFIG_H

#include "common.h"

#define CONTROL_PORTS 4

struct datapath_config {
	__u32 overlay_ifindex; /* 0: overlay not configured */
	__u32 node_ip;
	__u32 flags;           /* CFG_F_* */
	__u32 events_per_sec;  /* event budget per CPU (and burst); 0 = EVENTS_PER_SEC_DEFAULT */
	__u32 tunnel_ifindex;  /* the agent's TUN (encryption); 0 = none */
	__u32 pod_pool_addr;   /* the cluster's pod pool, network order; mask 0 = not set */
	__u32 pod_pool_mask;
	/* The node's control ports (RPC, gossip, encryption, VXLAN), host order; 0 = unused.
	 * Endpoints may not reach them on a node address without an explicit allow. */
	__u16 control_ports[CONTROL_PORTS];
};

#define CFG_F_TRACE (1U << 0)   /* emit a trace event for every packet forwarded */
#define CFG_F_ENCRYPT (1U << 1) /* remote pod traffic goes through the TUN, never VXLAN */
#define EVENTS_PER_SEC_DEFAULT 1000

_Static_assert(sizeof(struct datapath_config) == 36, "datapath_config size");
_Static_assert(__builtin_offsetof(struct datapath_config, control_ports) == 28,
	       "datapath_config control_ports");

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

MB_INLINE int cfg_encrypt(const struct datapath_config *cfg)
{
	return cfg && (cfg->flags & CFG_F_ENCRYPT);
}

/* Whether addr (network order) is inside the configured pod pool. */
MB_INLINE int cfg_in_pod_pool(const struct datapath_config *cfg, __u32 addr)
{
	return cfg && cfg->pod_pool_mask && (addr & cfg->pod_pool_mask) == cfg->pod_pool_addr;
}

/* Whether the TCP/UDP destination port (network order) is one of the node's control
 * ports. */
MB_INLINE int cfg_control_port(const struct datapath_config *cfg, __be16 dport)
{
	__u16 port = bpf_ntohs(dport);
	int i;

	if (!cfg || !port)
		return 0;
#pragma unroll
	for (i = 0; i < CONTROL_PORTS; i++)
		if (cfg->control_ports[i] && cfg->control_ports[i] == port)
			return 1;
	return 0;
}

#endif
