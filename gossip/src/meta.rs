//! The metadata every node gossips about itself, as chitchat key-values.
//!
//! One chitchat key per field, so that a change to one field (health, say) gossips only that
//! key. The node id is not a key: it is chitchat's node id. Unknown keys are ignored and
//! missing ones read as empty, so nodes of different versions understand each other.

use std::collections::BTreeMap;

/// What a node publishes about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMeta {
    /// Registry node id (never reused).
    pub id: u64,
    /// Node name.
    pub name: String,
    /// Address of the node's gRPC server (`ip:port`).
    pub rpc_addr: String,
    /// The node's pod CIDR, empty until the registry has allocated one.
    pub pod_cidr: String,
    /// Software version of the agent.
    pub version: String,
    /// "ok", or a short description of what is wrong.
    pub health: String,
    /// The node's gossip keyring as `primary:id,id,...` (ids only, never keys), so that a key
    /// rotation can wait until every node has installed or switched to a key. Set by
    /// [`crate::Gossip`] itself from its keyring; whatever a caller puts here is replaced.
    pub keyring: String,
    /// The policy revision the node's datapath enforces (decimal; empty until the first),
    /// so that `membrane policy wait REV` can wait for every node.
    pub policy_revision: String,
}

/// The chitchat keys of [`NodeMeta`]'s fields.
pub mod keys {
    /// [`super::NodeMeta::name`].
    pub const NAME: &str = "name";
    /// [`super::NodeMeta::rpc_addr`].
    pub const RPC_ADDR: &str = "rpc_addr";
    /// [`super::NodeMeta::pod_cidr`].
    pub const POD_CIDR: &str = "pod_cidr";
    /// [`super::NodeMeta::version`].
    pub const VERSION: &str = "version";
    /// [`super::NodeMeta::health`].
    pub const HEALTH: &str = "health";
    /// [`super::NodeMeta::keyring`].
    pub const KEYRING: &str = "keyring";
    /// [`super::NodeMeta::policy_revision`].
    pub const POLICY_REVISION: &str = "policy_rev";
}

impl NodeMeta {
    /// Formats a keyring summary for [`NodeMeta::keyring`].
    pub fn keyring_summary(primary: u32, ids: &[u32]) -> String {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        format!("{primary}:{}", ids.join(","))
    }

    /// Parses [`NodeMeta::policy_revision`]; `None` if absent or garbled.
    pub fn enforced_policy_revision(&self) -> Option<u64> {
        self.policy_revision.parse().ok()
    }

    /// Parses [`NodeMeta::keyring`]: (primary, installed ids); `None` if absent or garbled.
    pub fn parse_keyring(&self) -> Option<(u32, Vec<u32>)> {
        let (p, ids) = self.keyring.split_once(':')?;
        let ids = ids
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<u32>>>()?;
        Some((p.parse().ok()?, ids))
    }

    /// The key-values chitchat carries (every field but the id).
    pub fn to_key_values(&self) -> Vec<(String, String)> {
        vec![
            (keys::NAME.into(), self.name.clone()),
            (keys::RPC_ADDR.into(), self.rpc_addr.clone()),
            (keys::POD_CIDR.into(), self.pod_cidr.clone()),
            (keys::VERSION.into(), self.version.clone()),
            (keys::HEALTH.into(), self.health.clone()),
            (keys::KEYRING.into(), self.keyring.clone()),
            (keys::POLICY_REVISION.into(), self.policy_revision.clone()),
        ]
    }

    /// Rebuilds the metadata of node `id` from its key-values; missing keys stay empty,
    /// unknown keys are ignored.
    pub fn from_key_values<'a>(id: u64, kv: impl Iterator<Item = (&'a str, &'a str)>) -> NodeMeta {
        let kv: BTreeMap<&str, &str> = kv.collect();
        let get = |k: &str| kv.get(k).map(|v| v.to_string()).unwrap_or_default();
        NodeMeta {
            id,
            name: get(keys::NAME),
            rpc_addr: get(keys::RPC_ADDR),
            pod_cidr: get(keys::POD_CIDR),
            version: get(keys::VERSION),
            health: get(keys::HEALTH),
            keyring: get(keys::KEYRING),
            policy_revision: get(keys::POLICY_REVISION),
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
            policy_revision: "7".into(),
        };
        let kv = m.to_key_values();
        let back = NodeMeta::from_key_values(4, kv.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(back, m);
    }

    #[test]
    fn missing_and_unknown_keys_are_tolerated() {
        let kv = [("name", "n9"), ("from_the_future", "x")];
        let m = NodeMeta::from_key_values(9, kv.into_iter());
        assert_eq!(
            m,
            NodeMeta {
                id: 9,
                name: "n9".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn keyring_summary_round_trips_and_garbage_is_none() {
        let m = NodeMeta {
            keyring: NodeMeta::keyring_summary(2, &[1, 2]),
            ..Default::default()
        };
        assert_eq!(m.parse_keyring(), Some((2, vec![1, 2])));
        for bad in ["", "2", "x:1", "2:1,y", "2:-1"] {
            assert_eq!(
                NodeMeta {
                    keyring: bad.into(),
                    ..Default::default()
                }
                .parse_keyring(),
                None,
                "{bad}"
            );
        }
    }
}
