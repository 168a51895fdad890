/* Reserved security identities, Cilium's numbering; the registry (consensus/src/registry)
 * allocates from 256 up. Mirrored in ebpf/src/abi/identity.rs (checked by a test). */
#ifndef MEMBRANE_IDENTITY_H
#define MEMBRANE_IDENTITY_H

#define IDENTITY_UNKNOWN 0     /* not known, e.g. a remote node's whole pod CIDR */
#define IDENTITY_HOST 1        /* the local host (the node's own addresses) */
#define IDENTITY_WORLD 2       /* anything the ipcache does not know */
#define IDENTITY_UNMANAGED 3   /* a local workload not managed by Membrane */
#define IDENTITY_HEALTH 4      /* the health-check endpoint */
#define IDENTITY_INIT 5        /* an endpoint whose identity is not resolved yet */
#define IDENTITY_REMOTE_NODE 6 /* another node of the cluster */

#endif
