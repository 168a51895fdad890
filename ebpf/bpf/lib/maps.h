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
	__u32 endpoint_id; /* < 65536: policy and conntrack keep 16 bits */
	__u8 mac[6];       /* endpoint (container-side) MAC */
	__u8 host_mac[6];  /* host-side MAC */
	__u32 flags;       /* EP_F_*: which directions enforce policy */
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
	__u32 flags;       /* reserved, 0 */
};

/* endpoint_value.flags: which directions of the endpoint enforce policy. A direction
 * that is not enforced allows what no policy entry denies. */
#define EP_F_INGRESS_ENFORCED (1U << 0)
#define EP_F_EGRESS_ENFORCED (1U << 1)

struct datapath_config {
	__u32 overlay_ifindex; /* 0: overlay not configured */
	__u32 node_ip;
	__u32 flags;           /* CFG_F_* */
	__u32 events_per_sec;  /* event budget per CPU (and burst); 0 = EVENTS_PER_SEC_DEFAULT */
};

#define CFG_F_TRACE (1U << 0) /* emit a trace event for every packet forwarded */
#define EVENTS_PER_SEC_DEFAULT 1000

/* Policy direction, also the metrics row and the conntrack key's direction: ingress is
 * into the endpoint, egress out of it. */
#define DIR_INGRESS 0
#define DIR_EGRESS 1

/* Reserved identities (the registry allocates from 256 up). */
#define IDENTITY_UNKNOWN 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2

/* LPM key: after prefixlen the bytes are compared in order, so the 64 exactly matched
 * bits come first and the port (network order, high bits first) last.
 * prefixlen = 64 + port prefix length (0..16). */
struct policy_key {
	__u32 prefixlen;
	__u16 endpoint_id;
	__u8 direction;   /* DIR_* */
	__u8 proto;       /* IANA number, 0 = any */
	__u32 identity;   /* remote identity, 0 = any */
	__be16 port;      /* TCP/UDP destination port; ICMP: the type (bpf_htons(type)) */
	__u16 pad;
};

#define POLICY_PREFIX_EXACT 64 /* bits of endpoint_id, direction, proto, identity */
#define POLICY_PREFIX_FULL (POLICY_PREFIX_EXACT + 16)

#define POLICY_ALLOW 1
#define POLICY_DENY 2

struct policy_value {
	__u8 verdict;     /* POLICY_ALLOW or POLICY_DENY */
	__u8 pad[3];
	__u32 rule_id;    /* names the rule in events; 0 = none */
};

/* A connection as first seen at one policy point. direction says which: DIR_EGRESS at
 * the source endpoint (from_endpoint), DIR_INGRESS at the destination endpoint
 * (to_endpoint). A local->local connection therefore has two entries, one per policy
 * decision, so that neither side's entry can stand in for the other's policy. */
struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__be16 sport;     /* ICMP echo: the identifier, in both ports */
	__be16 dport;
	__u8 proto;
	__u8 direction;
	__u16 pad;
};

#define CT_F_SYN_SEEN (1U << 0)    /* TCP: the opening SYN passed */
#define CT_F_SEEN_REPLY (1U << 1)  /* a packet in the reply direction passed */
#define CT_F_ESTABLISHED (1U << 2) /* TCP: handshake completed */
#define CT_F_FIN_ORIG (1U << 3)    /* TCP: FIN from the original sender */
#define CT_F_FIN_REPLY (1U << 4)   /* TCP: FIN from the reply side */
#define CT_F_CLOSING (1U << 5)     /* TCP: RST, or FIN both ways */

struct ct_value {
	__u64 expires_ns;      /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) after which it is dead */
	__u64 packets;         /* both directions */
	__u64 bytes;
	__u32 remote_identity; /* of the policy decision that created the entry */
	__u32 rule_id;         /* the allow rule, 0 when allowed by default */
	__u32 flags;           /* CT_F_* */
	__u16 endpoint_id;     /* the endpoint whose policy decided */
	__u8 direction;        /* DIR_* of that decision (= ct_key.direction) */
	__u8 pad;
};

#define EVENT_DROP 1
#define EVENT_POLICY_VERDICT 2
#define EVENT_TRACE 3

/* One record of the events ring buffer. Addresses and ports in network byte order. */
struct flow_event {
	__u64 ts_ns;           /* bpf_ktime_get_ns() */
	__u32 saddr;
	__u32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 direction;        /* DIR_* */
	__u8 kind;             /* EVENT_* */
	__u16 reason;          /* enum reason */
	__u16 endpoint_id;     /* the local endpoint, 0 when unknown */
	__u32 remote_identity;
	__u32 rule_id;         /* the policy rule that decided, 0 = none */
	__u32 ifindex;         /* skb->ifindex where the program ran */
	__u32 len;             /* skb->len */
	__u8 policy_match;     /* 1..4 = policy table (I,P) (I,any) (any,P) (any,any); 0 none */
	__u8 icmp_type;        /* ICMP: the type (the ports hold only an echo identifier) */
	__u8 pad[2];
};

/* Per-CPU token bucket of the event rate limit; tokens in units of 1e-9 event so that
 * refills need no division. */
struct event_budget {
	__u64 tokens;
	__u64 last_ns;
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
_Static_assert(sizeof(struct policy_key) == 16, "policy_key size");
_Static_assert(__builtin_offsetof(struct policy_key, port) == 12, "policy_key port");
_Static_assert(sizeof(struct policy_value) == 8, "policy_value size");
_Static_assert(sizeof(struct ct_key) == 16, "ct_key size");
_Static_assert(sizeof(struct ct_value) == 40, "ct_value size");
_Static_assert(sizeof(struct flow_event) == 48, "flow_event size");
_Static_assert(sizeof(struct event_budget) == 16, "event_budget size");

#define ENDPOINTS_MAX 16384
#define IPCACHE_MAX 65536
#define POLICY_MAX 65536
#define CT_MAX 65536
#define EVENTS_BYTES (1U << 20)
/* Metrics index: direction * METRICS_PER_DIR + reason. */
#define METRICS_PER_DIR 64
#define METRICS_MAX (2 * METRICS_PER_DIR)

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

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, POLICY_MAX);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

/* LRU: a full table evicts the least recently used connection instead of refusing new
 * ones; an evicted connection goes through policy again (docs/datapath.md). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_MAX);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* Pinned too, so that both objects draw on one budget per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_budget SEC(".maps");

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
