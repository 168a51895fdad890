#ifndef MEMBRANE_ETH_H
#define MEMBRANE_ETH_H

#include "common.h"

/* Rewrites the Ethernet addresses before a redirect: the receiving interface only
 * accepts frames addressed to it, and the endpoint sees its gateway (the host side) as
 * the sender. bpf_skb_store_bytes works on non-linear skbs too. Returns < 0 on error. */
MB_INLINE int eth_rewrite(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	__u8 addrs[2 * ETH_ALEN];

	__builtin_memcpy(addrs, dst, ETH_ALEN);
	__builtin_memcpy(addrs + ETH_ALEN, src, ETH_ALEN);
	return bpf_skb_store_bytes(skb, 0, addrs, sizeof(addrs), 0);
}

#endif
