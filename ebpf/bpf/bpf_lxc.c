/* Endpoint programs, attached to the host side of each endpoint's veth
 * (docs/datapath.md, "Programs"). */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/eth.h"
#include "lib/ipv4.h"

/* tc ingress on the host side: packets leaving the endpoint. */
SEC("classifier")
int from_endpoint(struct __sk_buff *skb)
{
	struct endpoint_value *src, *dst;
	struct ipcache_value *info;
	struct datapath_config *cfg;
	struct bpf_tunnel_key key = {};
	struct iphdr ip;

	switch (ipv4_load(skb, &ip)) {
	case IPV4_OK:
		break;
	case IPV4_NOT_IPV4:
		return pass_to_stack(skb);
	default:
		return drop(skb, REASON_DROP_MALFORMED);
	}

	/* Anti-spoofing: the source must be the endpoint behind this very interface. */
	src = lookup_endpoint(ip.saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop(skb, REASON_DROP_SPOOFED);

	dst = lookup_endpoint(ip.daddr);
	if (dst) {
		if (eth_rewrite(skb, dst->mac, dst->host_mac) < 0)
			return drop(skb, REASON_DROP_REDIRECT_FAILED);
		return redirect_counted(skb, dst->ifindex, REASON_FORWARDED_LOCAL);
	}

	info = lookup_ipcache(ip.daddr);
	if (info && info->tunnel_endpoint) {
		cfg = lookup_config();
		if (!cfg || !cfg->overlay_ifindex)
			return drop(skb, REASON_DROP_NO_OVERLAY);
		/* bpf_tunnel_key.remote_ipv4 is in host byte order, the map in network order.
		 * The VNI is 24 bits wide: identities must stay below 2^24. */
		key.remote_ipv4 = bpf_ntohl(info->tunnel_endpoint);
		key.tunnel_id = src->identity;
		key.tunnel_ttl = 64;
		if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
			return drop(skb, REASON_DROP_REDIRECT_FAILED);
		return redirect_counted(skb, cfg->overlay_ifindex, REASON_FORWARDED_OVERLAY);
	}

	/* Not ours to forward: the host stack routes it (and masquerades if configured). */
	return pass_to_stack(skb);
}

/* tc egress on the host side: packets about to enter the endpoint. Ingress policy will
 * be enforced here; for now it counts. */
SEC("classifier")
int to_endpoint(struct __sk_buff *skb)
{
	metrics_count(skb, REASON_DELIVERED);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
