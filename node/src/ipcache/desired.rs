//! What the ipcache of a node must hold, computed from the registry's local copy without IO
//! (docs/datapath.md, "What the agent keeps in the maps").

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use membrane_consensus::Registry;
use membrane_ebpf::IpcacheValue;

use super::{IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_UNKNOWN};

/// The underlay IPv4 of a node, from its registered RPC address.
pub fn node_ip(rpc_addr: SocketAddr) -> Option<Ipv4Addr> {
    match rpc_addr.ip() {
        std::net::IpAddr::V4(v4) => Some(v4),
        std::net::IpAddr::V6(_) => None,
    }
}

fn host32(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("32 is a valid prefix length")
}

/// What the ipcache of node `me` must hold. `cidr_identities` are the node-local
/// identities of the CIDRs that policies name; a cluster entry for the same prefix wins.
pub fn desired_ipcache(
    reg: &Registry,
    me: u64,
    cidr_identities: &BTreeMap<Ipv4Net, u32>,
) -> BTreeMap<Ipv4Net, IpcacheValue> {
    let mut out: BTreeMap<Ipv4Net, IpcacheValue> = cidr_identities
        .iter()
        .map(|(net, id)| (*net, IpcacheValue::local(*id)))
        .collect();
    let mut tunnel_of = BTreeMap::new();
    for node in reg.nodes() {
        let ip = node_ip(node.rpc_addr);
        if let Some(ip) = ip {
            let identity = if node.id == me {
                IDENTITY_HOST
            } else {
                IDENTITY_REMOTE_NODE
            };
            out.insert(host32(ip), IpcacheValue::local(identity));
        }
        if node.id != me {
            // Without an underlay address the node cannot be tunnelled to; its pods then
            // fall to the host stack, as unknown destinations do.
            if let Some(ip) = ip {
                tunnel_of.insert(node.id, ip);
                out.insert(node.pod_cidr, IpcacheValue::remote(IDENTITY_UNKNOWN, ip));
            }
        }
    }
    for ep in reg.endpoints() {
        let tunnel = if ep.node_id == me {
            None
        } else {
            match tunnel_of.get(&ep.node_id) {
                Some(ip) => Some(*ip),
                // An endpoint of a node that is gone or has no address: leave it out.
                None => continue,
            }
        };
        out.insert(
            host32(ep.ipv4),
            match tunnel {
                Some(ip) => IpcacheValue::remote(ep.identity, ip),
                None => IpcacheValue::local(ep.identity),
            },
        );
    }
    out
}

/// Marks the prefixes of the nodes in `keys_ready` (those this node holds a tunnel send
/// key for) with key index 1. With encryption on, the datapath tunnels a remote prefix only
/// when it is marked and drops its packets as `no-key` otherwise; with it off the index is
/// not read.
pub fn mark_keys_ready(
    desired: &mut BTreeMap<Ipv4Net, IpcacheValue>,
    reg: &Registry,
    keys_ready: &BTreeSet<u64>,
) {
    let ready_ips: BTreeSet<Ipv4Addr> = keys_ready
        .iter()
        .filter_map(|id| reg.node(*id).and_then(|n| node_ip(n.rpc_addr)))
        .collect();
    for value in desired.values_mut() {
        if value
            .tunnel_endpoint()
            .is_some_and(|ip| ready_ips.contains(&ip))
        {
            *value = value.with_key_index(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::diff;
    use membrane_consensus::registry::{
        ClusterConfig, GossipKey, LabelSet, NewEndpoint, NewNode, Sha256, TokenRecord, X25519Public,
    };
    use membrane_consensus::{Command, Response};

    const HASH: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn node(name: &str, ip: &str) -> NewNode {
        NewNode {
            name: name.into(),
            rpc_addr: format!("{ip}:7700").parse().unwrap(),
            tls_key_sha256: Sha256([0x00; 32]),
            x25519_public: X25519Public([0x11; 32]),
        }
    }

    fn token(id: &str, uses: u32) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            secret_hash: HASH.into(),
            description: String::new(),
            created_at: 0,
            expires_at: 3600,
            max_uses: uses,
            uses: 0,
            revoked: false,
        }
    }

    /// Two nodes, 10.77.0.11 (pods 10.128.0.0/24) and 10.77.0.12 (10.128.1.0/24), one
    /// endpoint on each.
    fn registry() -> Registry {
        let mut r = Registry::default();
        r.apply(Command::Bootstrap {
            config: ClusterConfig {
                cluster_id: 1,
                name: "t".into(),
                pod_pool: "10.128.0.0/16".parse().unwrap(),
                node_prefix_len: 24,
                ca_cert_pem: String::new(),
                legacy_ca_key_pem: String::new(),
                created_at: 0,
            },
            first_node: node("n1", "10.77.0.11"),
            first_token: token("abcdef", 5),
            gossip_key: GossipKey {
                id: 1,
                key_hex: "ab".repeat(32),
            },
        })
        .into_result()
        .unwrap();
        r.apply(Command::AdmitNode {
            token_id: "abcdef".into(),
            presented_hash: HASH.into(),
            node: node("n2", "10.77.0.12"),
            now: 1,
        })
        .into_result()
        .unwrap();
        for (n, c) in [(1, "c1"), (2, "c2")] {
            let resp = r.apply(Command::AddEndpoint {
                endpoint: NewEndpoint {
                    node_id: n,
                    container_id: c.into(),
                    ifname: "eth0".into(),
                    netns: format!("/run/netns/{c}"),
                    labels: LabelSet::parse(&[format!("app={c}")]).unwrap(),
                    now: 2,
                },
            });
            assert!(matches!(resp, Response::Endpoint { .. }), "{resp:?}");
        }
        r
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn remote_pods_go_through_the_tunnel_and_local_ones_do_not() {
        let r = registry();
        let d = desired_ipcache(&r, 1, &BTreeMap::new());
        let id_c1 = r.endpoints_on(1).next().unwrap().identity;
        let id_c2 = r.endpoints_on(2).next().unwrap().identity;
        let expected: BTreeMap<Ipv4Net, IpcacheValue> = [
            (net("10.77.0.11/32"), IpcacheValue::local(IDENTITY_HOST)),
            (
                net("10.77.0.12/32"),
                IpcacheValue::local(IDENTITY_REMOTE_NODE),
            ),
            (
                net("10.128.1.0/24"),
                IpcacheValue::remote(IDENTITY_UNKNOWN, ip("10.77.0.12")),
            ),
            (net("10.128.0.2/32"), IpcacheValue::local(id_c1)),
            (
                net("10.128.1.2/32"),
                IpcacheValue::remote(id_c2, ip("10.77.0.12")),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(d, expected);
        // Seen from node 2, the roles swap.
        let d2 = desired_ipcache(&r, 2, &BTreeMap::new());
        assert_eq!(
            d2.get(&net("10.128.0.0/24")),
            Some(&IpcacheValue::remote(IDENTITY_UNKNOWN, ip("10.77.0.11")))
        );
        assert_eq!(
            d2.get(&net("10.128.1.2/32")),
            Some(&IpcacheValue::local(id_c2))
        );
        assert!(
            !d2.contains_key(&net("10.128.1.0/24")),
            "own pod CIDR is local"
        );
    }

    #[test]
    fn only_prefixes_of_nodes_with_a_ready_key_are_marked() {
        let r = registry();
        let mut d = desired_ipcache(&r, 1, &BTreeMap::new());
        let before = d.clone();
        mark_keys_ready(&mut d, &r, &BTreeSet::new());
        assert_eq!(d, before);
        mark_keys_ready(&mut d, &r, &[2].into_iter().collect());
        let id_c2 = r.endpoints_on(2).next().unwrap().identity;
        assert_eq!(
            d[&net("10.128.1.2/32")],
            IpcacheValue::remote(id_c2, ip("10.77.0.12")).with_key_index(1)
        );
        assert_eq!(d[&net("10.128.1.0/24")].key_index, 1);
        // Local entries and the peer's node address (not tunnelled) stay unmarked.
        assert_eq!(d[&net("10.77.0.12/32")].key_index, 0);
        assert_eq!(d[&net("10.128.0.2/32")].key_index, 0);
    }

    #[test]
    fn a_node_that_leaves_takes_its_entries_with_it() {
        let mut r = registry();
        let before = desired_ipcache(&r, 1, &BTreeMap::new());
        r.apply(Command::RemoveNode { id: 2 })
            .into_result()
            .unwrap();
        let after = desired_ipcache(&r, 1, &BTreeMap::new());
        let (upserts, removals) = diff(&before, &after);
        assert!(upserts.is_empty());
        let mut removals = removals;
        removals.sort();
        assert_eq!(
            removals,
            vec![
                net("10.77.0.12/32"),
                net("10.128.1.0/24"),
                net("10.128.1.2/32")
            ]
        );
    }
}
