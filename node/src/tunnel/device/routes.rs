//! Which peer a packet goes to, and which inner sources a peer may vouch for.
//!
//! The sender looks up an inner destination (a remote pod CIDR or node IP) to find the
//! peer to seal to and its underlay address. The receiver, after a packet authenticates as
//! sealed by node N, checks that the inner source lies in N's pod CIDR or is N's node IP:
//! a node can only speak for its own pods and itself, so a compromised or buggy node can
//! not inject traffic under another node's addresses. The table is swapped whole on update
//! (the agent recomputes it from the TunnelView), so a lookup never sees half an update.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, RwLock};

use ipnet::Ipv4Net;
use thiserror::Error;

/// One peer node as the device needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRoute {
    pub peer: u64,
    /// The pod CIDR the peer's endpoints use (inner addresses it may send from).
    pub pod_cidr: Ipv4Net,
    /// The peer's node IP (host traffic, also a legitimate inner source).
    pub node_ip: Ipv4Addr,
    /// Where the peer's device listens (node IP : encryption port).
    pub underlay: SocketAddrV4,
}

/// Why a route table was refused (the previous table stays in force).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RoutesError {
    #[error("peer {0} is listed twice; give each node once")]
    DuplicatePeer(u64),
    #[error("pod CIDRs {a} (peer {pa}) and {b} (peer {pb}) overlap; the registry allocates disjoint CIDRs, so the view is inconsistent")]
    Overlap {
        a: Ipv4Net,
        pa: u64,
        b: Ipv4Net,
        pb: u64,
    },
    #[error("peer {peer}: node IP {ip} is inside another peer's pod CIDR {cidr}")]
    NodeIpInPodCidr {
        peer: u64,
        ip: Ipv4Addr,
        cidr: Ipv4Net,
    },
    #[error("peer {peer}: underlay port 0 is not a listening port")]
    ZeroPort { peer: u64 },
}

#[derive(Debug, Default)]
struct Table {
    // Few nodes: a linear scan over a contiguous vector beats a trie at this size.
    peers: Vec<PeerRoute>,
}

/// The device's peer table, shared between the agent (writer) and the workers (readers).
#[derive(Debug, Default)]
pub struct PeerRoutes {
    table: RwLock<Arc<Table>>,
}

/// A consistent view of the table for one batch of packets.
#[derive(Debug, Clone)]
pub struct RoutesSnapshot(Arc<Table>);

impl PeerRoutes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the whole table. A bad list is refused and changes nothing.
    pub fn update(&self, routes: Vec<PeerRoute>) -> Result<(), RoutesError> {
        let mut seen = BTreeSet::new();
        for r in &routes {
            if !seen.insert(r.peer) {
                return Err(RoutesError::DuplicatePeer(r.peer));
            }
            if r.underlay.port() == 0 {
                return Err(RoutesError::ZeroPort { peer: r.peer });
            }
        }
        for (i, a) in routes.iter().enumerate() {
            for b in &routes[i + 1..] {
                if a.pod_cidr.contains(&b.pod_cidr) || b.pod_cidr.contains(&a.pod_cidr) {
                    return Err(RoutesError::Overlap {
                        a: a.pod_cidr,
                        pa: a.peer,
                        b: b.pod_cidr,
                        pb: b.peer,
                    });
                }
            }
            for b in &routes {
                if b.peer != a.peer && b.pod_cidr.contains(&a.node_ip) {
                    return Err(RoutesError::NodeIpInPodCidr {
                        peer: a.peer,
                        ip: a.node_ip,
                        cidr: b.pod_cidr,
                    });
                }
            }
        }
        let table = Arc::new(Table { peers: routes });
        // A poisoned lock only means a writer panicked between two whole-table swaps.
        let mut guard = self.table.write().unwrap_or_else(|e| e.into_inner());
        *guard = table;
        Ok(())
    }

    pub fn snapshot(&self) -> RoutesSnapshot {
        RoutesSnapshot(self.table.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    pub fn len(&self) -> usize {
        self.snapshot().0.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RoutesSnapshot {
    /// The peer an inner destination belongs to: its node IP, or inside its pod CIDR.
    pub fn by_destination(&self, dst: Ipv4Addr) -> Option<&PeerRoute> {
        self.0
            .peers
            .iter()
            .find(|r| r.node_ip == dst || r.pod_cidr.contains(&dst))
    }

    /// Whether `peer` may send packets with inner source `src`.
    pub fn source_allowed(&self, peer: u64, src: Ipv4Addr) -> bool {
        self.0
            .peers
            .iter()
            .any(|r| r.peer == peer && (r.node_ip == src || r.pod_cidr.contains(&src)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(peer: u64, cidr: &str, ip: [u8; 4]) -> PeerRoute {
        PeerRoute {
            peer,
            pod_cidr: cidr.parse().expect("cidr"),
            node_ip: Ipv4Addr::from(ip),
            underlay: SocketAddrV4::new(Ipv4Addr::from(ip), 8473),
        }
    }

    #[test]
    fn lookups() {
        let r = PeerRoutes::new();
        r.update(vec![
            route(2, "10.200.2.0/24", [192, 0, 2, 2]),
            route(3, "10.200.3.0/24", [192, 0, 2, 3]),
        ])
        .expect("valid");
        let s = r.snapshot();
        assert_eq!(
            s.by_destination([10, 200, 3, 9].into()).map(|p| p.peer),
            Some(3)
        );
        assert_eq!(
            s.by_destination([192, 0, 2, 2].into()).map(|p| p.peer),
            Some(2)
        );
        assert_eq!(s.by_destination([10, 200, 4, 1].into()), None);
        assert!(s.source_allowed(2, [10, 200, 2, 7].into()));
        assert!(s.source_allowed(2, [192, 0, 2, 2].into()));
        assert!(!s.source_allowed(2, [10, 200, 3, 7].into()), "peer 3's pod");
        assert!(
            !s.source_allowed(2, [192, 0, 2, 3].into()),
            "peer 3's node IP"
        );
        assert!(!s.source_allowed(9, [10, 200, 2, 7].into()), "unknown peer");
    }

    #[test]
    fn bad_tables_change_nothing() {
        let r = PeerRoutes::new();
        r.update(vec![route(2, "10.200.2.0/24", [192, 0, 2, 2])])
            .expect("valid");
        let dup = vec![
            route(2, "10.200.2.0/24", [192, 0, 2, 2]),
            route(2, "10.200.5.0/24", [192, 0, 2, 5]),
        ];
        assert_eq!(r.update(dup), Err(RoutesError::DuplicatePeer(2)));
        let overlap = vec![
            route(2, "10.200.0.0/16", [192, 0, 2, 2]),
            route(3, "10.200.3.0/24", [192, 0, 2, 3]),
        ];
        assert!(matches!(
            r.update(overlap),
            Err(RoutesError::Overlap { .. })
        ));
        let ip_in = vec![
            route(2, "10.200.2.0/24", [10, 200, 3, 1]),
            route(3, "10.200.3.0/24", [192, 0, 2, 3]),
        ];
        assert!(matches!(
            r.update(ip_in),
            Err(RoutesError::NodeIpInPodCidr { peer: 2, .. })
        ));
        let mut zero = route(4, "10.200.4.0/24", [192, 0, 2, 4]);
        zero.underlay.set_port(0);
        assert_eq!(r.update(vec![zero]), Err(RoutesError::ZeroPort { peer: 4 }));
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.snapshot()
                .by_destination([10, 200, 2, 1].into())
                .map(|p| p.peer),
            Some(2)
        );
    }
}
