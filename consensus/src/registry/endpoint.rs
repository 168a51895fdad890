//! Endpoints: the registry's record of every endpoint on every node.
//!
//! Registering an endpoint allocates its address (IPAM, from its node's pod CIDR) and takes
//! a reference on the identity of its labels, in one command, so that either both happen or
//! neither does. Every node learns every endpoint from here: the ipcache on each node maps
//! remote endpoint addresses to their identity and node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::LabelSet;

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
