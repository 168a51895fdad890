//! The metadata every node gossips about itself, as chitchat key-values.

use std::collections::BTreeMap;

/// What a node publishes. The node id is chitchat's node id; the rest are keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMeta {
    pub id: u64,
    pub name: String,
    pub rpc_addr: String,
    pub pod_cidr: String,
    pub version: String,
    /// "ok", or what is wrong.
    pub health: String,
    /// The node's gossip keyring as `primary:id,id,...` (ids only, never keys), so that a key
    /// rotation can wait until every node has installed or switched to a key.
    pub keyring: String,
}

const NAME: &str = "name";
const RPC_ADDR: &str = "rpc_addr";
const POD_CIDR: &str = "pod_cidr";
const VERSION: &str = "version";
const HEALTH: &str = "health";
const KEYRING: &str = "keyring";

impl NodeMeta {
    /// Formats a keyring summary for [`NodeMeta::keyring`].
    pub fn keyring_summary(primary: u32, ids: &[u32]) -> String {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        format!("{primary}:{}", ids.join(","))
    }

    /// Parses [`NodeMeta::keyring`]: (primary, installed ids).
    pub fn parse_keyring(&self) -> Option<(u32, Vec<u32>)> {
        let (p, ids) = self.keyring.split_once(':')?;
        let ids = ids.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().ok()).collect::<Option<Vec<u32>>>()?;
        Some((p.parse().ok()?, ids))
    }

    /// The key-values chitchat carries (everything but the id).
    pub fn to_key_values(&self) -> Vec<(String, String)> {
        vec![
            (NAME.into(), self.name.clone()),
            (RPC_ADDR.into(), self.rpc_addr.clone()),
            (POD_CIDR.into(), self.pod_cidr.clone()),
            (VERSION.into(), self.version.clone()),
            (HEALTH.into(), self.health.clone()),
            (KEYRING.into(), self.keyring.clone()),
        ]
    }

    /// Rebuilds the metadata of node `id` from its key-values; missing keys stay empty.
    pub fn from_key_values<'a>(id: u64, kv: impl Iterator<Item = (&'a str, &'a str)>) -> NodeMeta {
        let kv: BTreeMap<&str, &str> = kv.collect();
        let get = |k: &str| kv.get(k).map(|v| v.to_string()).unwrap_or_default();
        NodeMeta {
            id,
            name: get(NAME),
            rpc_addr: get(RPC_ADDR),
            pod_cidr: get(POD_CIDR),
            version: get(VERSION),
            health: get(HEALTH),
            keyring: get(KEYRING),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_round_trip() {
        let m = NodeMeta {
            id: 4,
            name: "n4".into(),
            rpc_addr: "10.0.0.4:7700".into(),
            pod_cidr: "10.128.3.0/24".into(),
            version: "0.1.0".into(),
            health: "ok".into(),
            keyring: "2:1,2".into(),
        };
        let kv = m.to_key_values();
        let back = NodeMeta::from_key_values(4, kv.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(back, m);
    }
}
