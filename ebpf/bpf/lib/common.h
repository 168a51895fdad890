/* Shared includes and small helpers for every Membrane BPF program.
 *
 * Each concern's header (endpoints.h, ipcache.h, config.h, metrics.h, policy.h,
 * conntrack.h, events.h) declares its structs and its map, once. Every map is pinned
 * with LIBBPF_PIN_BY_NAME, so the loader pins it by name in the pin directory and every
 * object that includes the header (bpf_lxc.o, bpf_overlay.o) shares one copy; the maps
 * also outlive the agent. The layouts are mirrored in ebpf/src/abi/, one Rust file per
 * header. */
#ifndef MEMBRANE_COMMON_H
#define MEMBRANE_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Every helper here is inlined: the programs stay single functions, which keeps the
 * verifier's job (and its error messages) simple. */
#define MB_INLINE static __always_inline

/* All IPv4 addresses in maps and events are in network byte order. */

/* Policy direction, also the metrics row and the conntrack key's direction: ingress is
 * into the endpoint, egress out of it. */
#define DIR_INGRESS 0
#define DIR_EGRESS 1

#endif
