/* Shared includes and small helpers for every Membrane BPF program. */
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

#endif
