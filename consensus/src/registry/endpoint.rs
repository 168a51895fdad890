//! Endpoints: the registry's record of every endpoint on every node.
//!
//! Registering an endpoint allocates its address (IPAM, from its node's pod CIDR) and takes
//! a reference on the identity of its labels, in one command, so that either both happen or
//! neither does. Every node learns every endpoint from here: the ipcache on each node maps
//! remote endpoint addresses to their identity and node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{ipam, LabelSet, Registry, RegistryError, Response};

/// Longest container id accepted (runtimes use 64 hex digits; leave room for others).
pub const MAX_CONTAINER_ID_LEN: usize = 256;
/// Longest network namespace path accepted.
pub const MAX_NETNS_LEN: usize = 4096;

/// One endpoint as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub node_id: u64,
    /// Node-local number, the lowest free one from 1 when the endpoint was added.
    pub id: u32,
    pub container_id: String,
    /// Interface name inside the endpoint's namespace.
    pub ifname: String,
    /// Path of the endpoint's network namespace, as the orchestrator gave it.
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub identity: u32,
    pub labels: LabelSet,
    pub created_at: i64,
}

/// What a node asks for when it adds an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEndpoint {
    pub node_id: u64,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub labels: LabelSet,
    /// The proposer's clock.
    pub now: i64,
}

/// Endpoints keyed by (node, container id, interface name): CNI's key for an attachment.
pub type EndpointKey = (u64, String, String);

/// The endpoint table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointTable {
    by_key: BTreeMap<EndpointKey, EndpointRecord>,
}

impl EndpointTable {
    pub fn iter(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.by_key.values()
    }

    pub fn get(&self, node_id: u64, container_id: &str, ifname: &str) -> Option<&EndpointRecord> {
        self.by_key
            .get(&(node_id, container_id.to_string(), ifname.to_string()))
    }

    pub fn on_node(&self, node_id: u64) -> impl Iterator<Item = &EndpointRecord> {
        self.by_key
            .range((node_id, String::new(), String::new())..)
            .take_while(move |((n, _, _), _)| *n == node_id)
            .map(|(_, r)| r)
    }

    /// Addresses held by endpoints of `node_id`.
    pub fn addresses_on(&self, node_id: u64) -> BTreeSet<Ipv4Addr> {
        self.on_node(node_id).map(|e| e.ipv4).collect()
    }

    /// The lowest endpoint number from 1 that no endpoint of `node_id` holds.
    pub fn next_id(&self, node_id: u64) -> u32 {
        let used: BTreeSet<u32> = self.on_node(node_id).map(|e| e.id).collect();
        (1..=u32::MAX)
            .find(|i| !used.contains(i))
            .unwrap_or(u32::MAX)
    }

    pub fn insert(&mut self, rec: EndpointRecord) {
        self.by_key.insert(
            (rec.node_id, rec.container_id.clone(), rec.ifname.clone()),
            rec,
        );
    }

    pub fn remove(
        &mut self,
        node_id: u64,
        container_id: &str,
        ifname: &str,
    ) -> Option<EndpointRecord> {
        self.by_key
            .remove(&(node_id, container_id.to_string(), ifname.to_string()))
    }

    /// Removes and returns every endpoint of `node_id`.
    pub fn remove_node(&mut self, node_id: u64) -> Vec<EndpointRecord> {
        let keys: Vec<EndpointKey> = self
            .by_key
            .range((node_id, String::new(), String::new())..)
            .take_while(|((n, _, _), _)| *n == node_id)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| self.by_key.remove(&k))
            .collect()
    }
}

/// Addresses that removed endpoints held, with the time they were freed (the removing
/// command's `now`), kept while they rest ([`ipam::ADDRESS_REUSE_GRACE_SECS`]). Keyed by
/// address alone, so a pod CIDR given to another node keeps its resting addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreedAddresses {
    by_addr: BTreeMap<Ipv4Addr, i64>,
}

impl FreedAddresses {
    /// Address -> when it was freed.
    pub fn as_map(&self) -> &BTreeMap<Ipv4Addr, i64> {
        &self.by_addr
    }

    /// Records `addr` as freed at `now`, and forgets addresses whose grace has ended (the
    /// map stays as small as the addresses freed in the last grace period).
    fn free(&mut self, addr: Ipv4Addr, now: i64) {
        self.by_addr.retain(|_, t| ipam::resting(*t, now));
        self.by_addr.insert(addr, now);
    }

    /// `addr` is held again.
    fn taken(&mut self, addr: Ipv4Addr, now: i64) {
        self.by_addr.remove(&addr);
        self.by_addr.retain(|_, t| ipam::resting(*t, now));
    }
}

/// Checks a container id: non-empty, bounded, printable ASCII without spaces or slashes.
pub fn validate_container_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the container id is empty".into());
    }
    if id.len() > MAX_CONTAINER_ID_LEN {
        return Err(format!(
            "the container id is {} bytes long; at most {MAX_CONTAINER_ID_LEN} are accepted",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic() || *c == '/') {
        return Err(format!(
            "the container id {id:?} contains {c:?}; use letters, digits and punctuation other than '/'"
        ));
    }
    Ok(())
}

/// Checks a Linux interface name: 1-15 bytes, no '/', ':', whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface name {name:?} must be 1 to 15 characters long"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || *c == '/' || *c == ':')
    {
        return Err(format!(
            "interface name {name:?} contains {c:?}, which Linux does not allow"
        ));
    }
    Ok(())
}

/// Checks a network namespace path: absolute and bounded (whether it exists is for the
/// node that adds the endpoint to check; the registry never touches the file system).
pub fn validate_netns(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "network namespace {path:?} is not an absolute path (e.g. /var/run/netns/NAME)"
        ));
    }
    if path.len() > MAX_NETNS_LEN || path.contains('\0') {
        return Err("the network namespace path is too long or contains NUL".into());
    }
    Ok(())
}

impl Registry {
    /// Every endpoint of every node, by (node, container id, ifname).
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.endpoints.iter()
    }

    /// The endpoints of one node.
    pub fn endpoints_on(&self, node_id: u64) -> impl Iterator<Item = &EndpointRecord> {
        self.endpoints.on_node(node_id)
    }

    pub fn endpoint(
        &self,
        node_id: u64,
        container_id: &str,
        ifname: &str,
    ) -> Option<&EndpointRecord> {
        self.endpoints.get(node_id, container_id, ifname)
    }

    pub(super) fn add_endpoint(&mut self, new: NewEndpoint) -> Result<Response, RegistryError> {
        self.config()?;
        let invalid = RegistryError::InvalidEndpoint;
        validate_container_id(&new.container_id).map_err(invalid)?;
        validate_ifname(&new.ifname).map_err(invalid)?;
        validate_netns(&new.netns).map_err(invalid)?;
        new.labels.check_size()?;
        let node = self
            .nodes
            .get(&new.node_id)
            .ok_or(RegistryError::NodeNotFound { id: new.node_id })?;
        let pod_cidr = node.pod_cidr;
        if let Some(existing) = self
            .endpoints
            .get(new.node_id, &new.container_id, &new.ifname)
        {
            if existing.netns != new.netns {
                return Err(RegistryError::EndpointConflict(format!(
                    "container {:?} already has interface {:?} in network namespace {}; delete it first or use the same namespace",
                    new.container_id, new.ifname, existing.netns
                )));
            }
            return Ok(Response::Endpoint {
                endpoint: existing.clone(),
                created: false,
            });
        }
        if let Some(other) = self
            .endpoints
            .on_node(new.node_id)
            .find(|e| e.netns == new.netns && e.ifname == new.ifname)
        {
            return Err(RegistryError::EndpointConflict(format!(
                "interface {:?} in network namespace {} already belongs to container {:?}; pick another interface name",
                new.ifname, new.netns, other.container_id
            )));
        }
        let ipv4 = ipam::allocate_after_grace(
            pod_cidr,
            &self.endpoints.addresses_on(new.node_id),
            self.freed_addresses.as_map(),
            new.now,
        )
        .ok_or(RegistryError::EndpointAddressesExhausted {
            node_id: new.node_id,
            cidr: pod_cidr.to_string(),
            capacity: ipam::capacity(pod_cidr),
        })?;
        // Last fallible step; it changes nothing when it fails.
        let (identity, _) = self.identities.allocate(new.labels.clone())?;
        let rec = EndpointRecord {
            node_id: new.node_id,
            id: self.endpoints.next_id(new.node_id),
            container_id: new.container_id,
            ifname: new.ifname,
            netns: new.netns,
            ipv4,
            identity: identity.id,
            labels: new.labels,
            created_at: new.now,
        };
        self.endpoints.insert(rec.clone());
        self.freed_addresses.taken(ipv4, new.now);
        Ok(Response::Endpoint {
            endpoint: rec,
            created: true,
        })
    }

    pub(super) fn remove_endpoint(
        &mut self,
        node_id: u64,
        container_id: &str,
        ifname: &str,
    ) -> Option<EndpointRecord> {
        let ep = self.endpoints.remove(node_id, container_id, ifname)?;
        let _ = self.identities.release(&ep.labels);
        Some(ep)
    }

    /// Removes an endpoint as [`Command::RemoveEndpointAt`]: its address rests from `now`.
    ///
    /// [`Command::RemoveEndpointAt`]: super::Command::RemoveEndpointAt
    pub(super) fn remove_endpoint_at(
        &mut self,
        node_id: u64,
        container_id: &str,
        ifname: &str,
        now: i64,
    ) -> Option<EndpointRecord> {
        let ep = self.remove_endpoint(node_id, container_id, ifname)?;
        self.freed_addresses.free(ep.ipv4, now);
        Some(ep)
    }

    /// Addresses resting after their endpoint was removed: address -> when it was freed.
    pub fn freed_addresses(&self) -> &BTreeMap<Ipv4Addr, i64> {
        self.freed_addresses.as_map()
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::test_support::*;
    use crate::registry::{Command, LabelSet, Registry, RegistryError, Response};

    #[test]
    fn t80_add_endpoint_allocates_address_and_identity() {
        let mut r = bootstrapped();
        let (a, created) =
            added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
        assert!(created);
        assert_eq!(a.ipv4, "10.128.0.2".parse::<std::net::Ipv4Addr>().unwrap());
        assert_eq!(a.id, 1);
        let ident = r.identity(a.identity).expect("identity allocated");
        assert_eq!(ident.references, 1);
        let (b, _) = added(r.apply(new_endpoint(1, "c2", "eth0", "/run/netns/b", &["app=web"])));
        assert_eq!(b.ipv4, "10.128.0.3".parse::<std::net::Ipv4Addr>().unwrap());
        assert_eq!(b.identity, a.identity, "same labels, same identity");
        assert_eq!(r.identity(a.identity).unwrap().references, 2);
        assert_eq!(b.id, 2);
    }

    #[test]
    fn t81_repeated_add_returns_the_same_record_and_takes_no_reference() {
        let mut r = bootstrapped();
        let (a, _) = added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
        let before = r.clone();
        let (again, created) =
            added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
        assert!(!created);
        assert_eq!(again, a);
        assert_eq!(r, before);
    }

    #[test]
    fn t82_conflicting_adds_are_refused_and_change_nothing() {
        let mut r = bootstrapped();
        added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
        // Same container and ifname, another namespace.
        refused(
            &mut r,
            new_endpoint(1, "c1", "eth0", "/run/netns/other", &["app=web"]),
            |e| matches!(e, RegistryError::EndpointConflict(m) if m.contains("already has interface")),
        );
        // Another container claiming the same interface of the same namespace.
        refused(
            &mut r,
            new_endpoint(1, "c2", "eth0", "/run/netns/a", &["app=db"]),
            |e| matches!(e, RegistryError::EndpointConflict(m) if m.contains("already belongs")),
        );
        refused(
            &mut r,
            new_endpoint(9, "c3", "eth0", "/run/netns/c", &["a=b"]),
            |e| matches!(e, RegistryError::NodeNotFound { id: 9 }),
        );
        for (c, i, n) in [
            ("", "eth0", "/run/netns/x"),
            ("c/4", "eth0", "/run/netns/x"),
            ("c4", "", "/run/netns/x"),
            ("c4", "a-name-too-long-for-linux", "/run/netns/x"),
            ("c4", "et h0", "/run/netns/x"),
            ("c4", "eth0", "relative/path"),
        ] {
            refused(&mut r, new_endpoint(1, c, i, n, &["a=b"]), |e| {
                matches!(e, RegistryError::InvalidEndpoint(_))
            });
        }
    }

    #[test]
    fn t83_exhausted_pod_cidr_is_refused_and_allocates_nothing() {
        let mut r = Registry::default();
        let mut cfg = config();
        cfg.node_prefix_len = 30;
        r.apply(Command::Bootstrap {
            config: cfg,
            first_node: new_node("n1"),
            first_token: token("abcdef", HASH_A, 1),
            gossip_key: gossip_key(1),
        })
        .into_result()
        .unwrap();
        added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
        refused(
            &mut r,
            new_endpoint(1, "c2", "eth0", "/run/netns/b", &["app=new"]),
            |e| {
                matches!(
                    e,
                    RegistryError::EndpointAddressesExhausted { capacity: 1, .. }
                )
            },
        );
        let labels = LabelSet::parse(&["app=new"]).unwrap();
        assert!(r.identity_by_labels(&labels).is_none(), "no identity taken");
    }

    fn remove_at(r: &mut Registry, container_id: &str, now: i64) -> Response {
        r.apply(Command::RemoveEndpointAt {
            node_id: 1,
            container_id: container_id.into(),
            ifname: "eth0".into(),
            now,
        })
    }

    fn added_at(
        r: &mut Registry,
        container_id: &str,
        labels: &[&str],
        now: i64,
    ) -> crate::registry::EndpointRecord {
        let mut cmd = new_endpoint(1, container_id, "eth0", "/run/netns/x", labels);
        let Command::AddEndpoint { endpoint } = &mut cmd else {
            panic!()
        };
        endpoint.netns = format!("/run/netns/{container_id}");
        endpoint.now = now;
        added(r.apply(cmd)).0
    }

    #[test]
    fn t85_a_removed_endpoints_address_rests_before_reuse() {
        use crate::registry::ipam::ADDRESS_REUSE_GRACE_SECS as GRACE;
        let mut r = bootstrapped();
        let a = added_at(&mut r, "a", &["app=x"], T0);
        let resp = remove_at(&mut r, "a", T0 + 10);
        assert_eq!(resp, Response::EndpointRemoved(Some(a.clone())));
        assert_eq!(r.freed_addresses().get(&a.ipv4), Some(&(T0 + 10)));
        let b = added_at(&mut r, "b", &["app=y"], T0 + 11);
        assert_ne!(b.ipv4, a.ipv4, "resting address skipped");
        let c = added_at(&mut r, "c", &["app=y"], T0 + 10 + GRACE);
        assert_eq!(c.ipv4, a.ipv4, "grace over: the lowest free again");
        assert!(r.freed_addresses().is_empty(), "taken again: forgotten");
        // An unknown endpoint: nothing changes, nothing is recorded.
        let before = r.clone();
        assert_eq!(
            remove_at(&mut r, "nobody", T0 + 99_999),
            Response::EndpointRemoved(None)
        );
        assert_eq!(r, before);
    }

    #[test]
    fn t86_a_full_pool_reuses_the_address_freed_longest_ago() {
        let mut r = Registry::default();
        let mut cfg = config();
        cfg.node_prefix_len = 29; // usable .2 - .6: five endpoints
        r.apply(Command::Bootstrap {
            config: cfg,
            first_node: new_node("n1"),
            first_token: token("abcdef", HASH_A, 1),
            gossip_key: gossip_key(1),
        })
        .into_result()
        .unwrap();
        let eps: Vec<_> = (0..5)
            .map(|i| added_at(&mut r, &format!("c{i}"), &["app=x"], T0))
            .collect();
        remove_at(&mut r, "c3", T0 + 5);
        remove_at(&mut r, "c1", T0 + 6);
        let n = added_at(&mut r, "n1", &["app=y"], T0 + 7);
        assert_eq!(n.ipv4, eps[3].ipv4, "the one freed longest ago");
        let m = added_at(&mut r, "n2", &["app=y"], T0 + 8);
        assert_eq!(m.ipv4, eps[1].ipv4);
        refused(
            &mut r,
            new_endpoint(1, "n3", "eth0", "/run/netns/n3", &["app=y"]),
            |e| matches!(e, RegistryError::EndpointAddressesExhausted { .. }),
        );
    }

    #[test]
    fn t87_the_old_remove_endpoint_still_applies_without_a_grace() {
        // Logs written before RemoveEndpointAt hold RemoveEndpoint; applied as then.
        let mut r = bootstrapped();
        let a = added_at(&mut r, "a", &["app=x"], T0);
        r.apply(Command::RemoveEndpoint {
            node_id: 1,
            container_id: "a".into(),
            ifname: "eth0".into(),
        });
        assert!(r.freed_addresses().is_empty());
        assert_eq!(added_at(&mut r, "b", &["app=y"], T0 + 1).ipv4, a.ipv4);
    }

    #[test]
    fn t84_remove_endpoint_frees_address_and_reference() {
        let mut r = bootstrapped();
        let (a, _) = added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
        let resp = r.apply(Command::RemoveEndpoint {
            node_id: 1,
            container_id: "c1".into(),
            ifname: "eth0".into(),
        });
        assert_eq!(resp, Response::EndpointRemoved(Some(a.clone())));
        assert!(r.identity(a.identity).is_none(), "last reference released");
        assert_eq!(r.endpoints().count(), 0);
        // Unknown: fine, nothing changes.
        let before = r.clone();
        let resp = r.apply(Command::RemoveEndpoint {
            node_id: 1,
            container_id: "c1".into(),
            ifname: "eth0".into(),
        });
        assert_eq!(resp, Response::EndpointRemoved(None));
        assert_eq!(r, before);
        // The address is free again.
        let (b, _) = added(r.apply(new_endpoint(1, "c9", "eth0", "/run/netns/z", &["app=web"])));
        assert_eq!(b.ipv4, a.ipv4);
    }
}
