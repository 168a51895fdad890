//! What the tunnel should hold, read from the registry (pure): for every peer, where to send,
//! which pod CIDR it vouches for, the epoch to seal with and the epochs to accept.
//!
//! A peer's send epoch is the newest activated epoch in which both nodes have a key and the
//! peer reported having installed this node: a key is never used before the receiver holds
//! it (cilium #44335). Every epoch not retired is accepted, so packets sealed by a node still
//! on the previous epoch open during the overlap (cilium #37920).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddrV4};

use ipnet::Ipv4Net;
use membrane_consensus::registry::Registry;

/// The tunnel's desired state on node `me`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelView {
    pub enabled: bool,
    pub cluster_id: u8,
    pub me: u64,
    pub peers: BTreeMap<u64, PeerView>,
}

/// One peer node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub node_id: u64,
    /// The peer's node IP and the encryption port.
    pub underlay: SocketAddrV4,
    pub pod_cidr: Ipv4Net,
    /// The epoch to seal with; `None`: no key is ready (strict mode drops).
    pub send_epoch: Option<u32>,
    /// Epoch -> the peer's public key, for every epoch not retired in which it has one.
    pub accept: BTreeMap<u32, [u8; 32]>,
}

impl TunnelView {
    /// Peers with a key ready to send with.
    pub fn ready(&self) -> impl Iterator<Item = &PeerView> {
        self.peers.values().filter(|p| p.send_epoch.is_some())
    }
}

/// The view of node `me`. Peers whose address is not IPv4 are left out (the underlay is
/// IPv4 only, as the datapath is).
pub fn tunnel_view(reg: &Registry, me: u64, encryption_port: u16) -> TunnelView {
    let enc = reg.encryption();
    let peers = reg
        .nodes()
        .filter(|n| n.id != me)
        .filter_map(|n| {
            let IpAddr::V4(ip) = n.rpc_addr.ip() else {
                return None;
            };
            let accept: BTreeMap<u32, [u8; 32]> = enc
                .epochs
                .iter()
                .filter_map(|(num, e)| e.keys.get(&n.id).map(|k| (*num, k.0)))
                .collect();
            let send_epoch = enc
                .epochs
                .iter()
                .rev()
                .filter(|(_, e)| e.is_activated())
                .find(|(_, e)| {
                    e.keys.contains_key(&me)
                        && e.keys.contains_key(&n.id)
                        && e.installed.get(&n.id).is_some_and(|s| s.contains(&me))
                })
                .map(|(num, _)| *num);
            Some((
                n.id,
                PeerView {
                    node_id: n.id,
                    underlay: SocketAddrV4::new(ip, encryption_port),
                    pod_cidr: n.pod_cidr,
                    send_epoch,
                    accept,
                },
            ))
        })
        .collect();
    TunnelView {
        enabled: enc.enabled,
        cluster_id: reg.cluster().map(|c| c.cluster_id).unwrap_or(0),
        me,
        peers,
    }
}

#[cfg(test)]
mod tests {
    use membrane_consensus::registry::Command;

    use super::*;
    use crate::tunnel::test_support::*;

    #[test]
    fn a_peer_gets_a_send_epoch_only_once_it_installed_me() {
        let (mut r, [a, b, c]) = three_nodes();
        apply(&mut r, Command::BeginTunnelEpoch { now: 1 });
        for n in [a, b, c] {
            publish(&mut r, n, 1);
        }
        let v = tunnel_view(&r, a, 8473);
        assert!(v.enabled);
        assert_eq!(v.peers.len(), 2);
        assert_eq!(v.peers[&b].accept.keys().collect::<Vec<_>>(), vec![&1]);
        assert_eq!(v.peers[&b].underlay.port(), 8473);
        assert_eq!(v.ready().count(), 0, "pending: nobody sends");
        for (n, peers) in [(a, [b, c]), (b, [a, c]), (c, [a, b])] {
            report(&mut r, n, 1, &peers);
        }
        apply(&mut r, Command::ActivateTunnelEpoch { epoch: 1, now: 2 });
        let v = tunnel_view(&r, a, 8473);
        assert_eq!(v.peers[&b].send_epoch, Some(1));
        assert_eq!(v.peers[&c].send_epoch, Some(1));
    }

    #[test]
    fn a_late_node_is_sent_to_only_with_epochs_it_installed() {
        let (mut r, [a, b, c]) = three_nodes();
        activate_with(&mut r, 1, &[a, b]);
        // c comes back and publishes late into the active epoch: a still may not send to it
        // until c reports having installed a.
        publish(&mut r, c, 1);
        assert_eq!(tunnel_view(&r, a, 1).peers[&c].send_epoch, None);
        assert!(tunnel_view(&r, a, 1).peers[&c].accept.contains_key(&1));
        report(&mut r, c, 1, &[a, b]);
        assert_eq!(tunnel_view(&r, a, 1).peers[&c].send_epoch, Some(1));
        // c may not send to a before a installed c.
        assert_eq!(tunnel_view(&r, c, 1).peers[&a].send_epoch, None);
        report(&mut r, a, 1, &[b, c]);
        assert_eq!(tunnel_view(&r, c, 1).peers[&a].send_epoch, Some(1));
    }

    #[test]
    fn during_a_rotation_senders_stay_on_the_old_epoch_and_both_are_accepted() {
        let (mut r, [a, b, c]) = three_nodes();
        activate_with(&mut r, 1, &[a, b, c]);
        apply(&mut r, Command::BeginTunnelEpoch { now: 5 });
        for n in [a, b, c] {
            publish(&mut r, n, 2);
        }
        report(&mut r, b, 2, &[a, c]);
        let v = tunnel_view(&r, a, 1);
        assert_eq!(v.peers[&b].send_epoch, Some(1), "epoch 2 not active yet");
        assert_eq!(
            v.peers[&b].accept.keys().copied().collect::<Vec<_>>(),
            vec![1, 2]
        );
        report(&mut r, a, 2, &[b, c]);
        report(&mut r, c, 2, &[a, b]);
        apply(&mut r, Command::ActivateTunnelEpoch { epoch: 2, now: 6 });
        assert_eq!(tunnel_view(&r, a, 1).peers[&b].send_epoch, Some(2));
        apply(&mut r, Command::RetireTunnelEpoch { epoch: 1 });
        let v = tunnel_view(&r, a, 1);
        assert_eq!(
            v.peers[&b].accept.keys().copied().collect::<Vec<_>>(),
            vec![2]
        );
    }

    #[test]
    fn a_removed_node_is_no_peer() {
        let (mut r, [a, b, c]) = three_nodes();
        activate_with(&mut r, 1, &[a, b, c]);
        apply(&mut r, Command::RemoveNode { id: c });
        let v = tunnel_view(&r, a, 1);
        assert!(!v.peers.contains_key(&c));
        assert_eq!(v.peers[&b].send_epoch, Some(1));
    }
}
