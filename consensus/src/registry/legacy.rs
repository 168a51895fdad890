//! Frozen shapes of what stores written before issue 11 hold, for reading them.
//!
//! Never edit these: they are the bytes on old disks. The registry's inner types did not
//! change shape (a renamed field encodes the same in bincode), so they are reused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::endpoint::EndpointTable;
use super::identity::IdentityTable;
use super::policy::PolicyTable;
use super::{
    CaRotation, CertRecord, ClusterConfig, FreedAddresses, GossipKeyring, NodeRecord, Registry,
    Sha256, TokenRecord,
};

/// [`Registry`] as snapshots before issue 11 encoded it: these eight fields, in this order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RegistryV0 {
    pub cluster: Option<ClusterConfig>,
    pub nodes: BTreeMap<u64, NodeRecord>,
    pub tokens: BTreeMap<String, TokenRecord>,
    pub identities: IdentityTable,
    pub next_node_id: u64,
    pub gossip_keyring: Option<GossipKeyring>,
    pub endpoints: EndpointTable,
    pub policies: PolicyTable,
}

impl From<RegistryV0> for Registry {
    /// An old registry has no certificate records, revocations or API references: nodes
    /// admitted before issue 11 get a record when they first renew.
    fn from(v0: RegistryV0) -> Registry {
        Registry {
            cluster: v0.cluster,
            nodes: v0.nodes,
            tokens: v0.tokens,
            identities: v0.identities,
            next_node_id: v0.next_node_id,
            gossip_keyring: v0.gossip_keyring,
            endpoints: v0.endpoints,
            policies: v0.policies,
            certificates: BTreeMap::new(),
            revoked: BTreeMap::new(),
            api_identity_refs: BTreeMap::new(),
            ca_rotation: None,
            freed_addresses: FreedAddresses::default(),
            encryption: Default::default(),
        }
    }
}

/// [`Registry`] as snapshot format 1 (issue 11, before `membrane ca rotate`) encoded it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RegistryV1 {
    pub cluster: Option<ClusterConfig>,
    pub nodes: BTreeMap<u64, NodeRecord>,
    pub tokens: BTreeMap<String, TokenRecord>,
    pub identities: IdentityTable,
    pub next_node_id: u64,
    pub gossip_keyring: Option<GossipKeyring>,
    pub endpoints: EndpointTable,
    pub policies: PolicyTable,
    pub certificates: BTreeMap<u64, CertRecord>,
    pub revoked: BTreeMap<u64, Sha256>,
    #[serde(with = "super::identity::refs_as_list")]
    pub api_identity_refs: BTreeMap<(u64, u32), u32>,
}

impl From<RegistryV1> for Registry {
    /// A format-1 registry has no rotation under way.
    fn from(v1: RegistryV1) -> Registry {
        Registry {
            cluster: v1.cluster,
            nodes: v1.nodes,
            tokens: v1.tokens,
            identities: v1.identities,
            next_node_id: v1.next_node_id,
            gossip_keyring: v1.gossip_keyring,
            endpoints: v1.endpoints,
            policies: v1.policies,
            certificates: v1.certificates,
            revoked: v1.revoked,
            api_identity_refs: v1.api_identity_refs,
            ca_rotation: None,
            freed_addresses: FreedAddresses::default(),
            encryption: Default::default(),
        }
    }
}

/// [`Registry`] as snapshot format 2 (`membrane ca rotate`, before issue 12) encoded it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RegistryV2 {
    pub cluster: Option<ClusterConfig>,
    pub nodes: BTreeMap<u64, NodeRecord>,
    pub tokens: BTreeMap<String, TokenRecord>,
    pub identities: IdentityTable,
    pub next_node_id: u64,
    pub gossip_keyring: Option<GossipKeyring>,
    pub endpoints: EndpointTable,
    pub policies: PolicyTable,
    pub certificates: BTreeMap<u64, CertRecord>,
    pub revoked: BTreeMap<u64, Sha256>,
    #[serde(with = "super::identity::refs_as_list")]
    pub api_identity_refs: BTreeMap<(u64, u32), u32>,
    pub ca_rotation: Option<CaRotation>,
}

impl From<RegistryV2> for Registry {
    /// A format-2 registry has no resting addresses (every free address may be given out),
    /// encryption off and no key epochs.
    fn from(v2: RegistryV2) -> Registry {
        Registry {
            cluster: v2.cluster,
            nodes: v2.nodes,
            tokens: v2.tokens,
            identities: v2.identities,
            next_node_id: v2.next_node_id,
            gossip_keyring: v2.gossip_keyring,
            endpoints: v2.endpoints,
            policies: v2.policies,
            certificates: v2.certificates,
            revoked: v2.revoked,
            api_identity_refs: v2.api_identity_refs,
            ca_rotation: v2.ca_rotation,
            freed_addresses: FreedAddresses::default(),
            encryption: Default::default(),
        }
    }
}

#[cfg(test)]
impl Registry {
    /// The twelve fields of snapshot format 2.
    pub(crate) fn to_v2(&self) -> RegistryV2 {
        RegistryV2 {
            cluster: self.cluster.clone(),
            nodes: self.nodes.clone(),
            tokens: self.tokens.clone(),
            identities: self.identities.clone(),
            next_node_id: self.next_node_id,
            gossip_keyring: self.gossip_keyring.clone(),
            endpoints: self.endpoints.clone(),
            policies: self.policies.clone(),
            certificates: self.certificates.clone(),
            revoked: self.revoked.clone(),
            api_identity_refs: self.api_identity_refs.clone(),
            ca_rotation: self.ca_rotation.clone(),
        }
    }

    /// The eight old fields, as an old snapshot of this registry would hold them.
    pub(crate) fn to_v0(&self) -> RegistryV0 {
        RegistryV0 {
            cluster: self.cluster.clone(),
            nodes: self.nodes.clone(),
            tokens: self.tokens.clone(),
            identities: self.identities.clone(),
            next_node_id: self.next_node_id,
            gossip_keyring: self.gossip_keyring.clone(),
            endpoints: self.endpoints.clone(),
            policies: self.policies.clone(),
        }
    }

    /// The eleven fields of snapshot format 1.
    pub(crate) fn to_v1(&self) -> RegistryV1 {
        RegistryV1 {
            cluster: self.cluster.clone(),
            nodes: self.nodes.clone(),
            tokens: self.tokens.clone(),
            identities: self.identities.clone(),
            next_node_id: self.next_node_id,
            gossip_keyring: self.gossip_keyring.clone(),
            endpoints: self.endpoints.clone(),
            policies: self.policies.clone(),
            certificates: self.certificates.clone(),
            revoked: self.revoked.clone(),
            api_identity_refs: self.api_identity_refs.clone(),
        }
    }
}

/// The recursive `Command` as it was before issue 11, frozen for the compatibility tests.
#[cfg(test)]
pub(crate) mod old_command {
    use serde::{Deserialize, Serialize};

    use crate::registry::{
        ClusterConfig, GossipKey, LabelSet, NewEndpoint, NewNode, NewPolicy, TokenRecord,
    };

    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub enum OldCommand {
        Bootstrap {
            config: ClusterConfig,
            first_node: NewNode,
            first_token: TokenRecord,
            gossip_key: GossipKey,
        },
        CreateToken {
            token: TokenRecord,
        },
        RevokeToken {
            id: String,
        },
        AdmitNode {
            token_id: String,
            presented_hash: String,
            node: NewNode,
            now: i64,
        },
        RemoveNode {
            id: u64,
        },
        AllocateIdentity {
            labels: LabelSet,
        },
        ReleaseIdentity {
            labels: LabelSet,
        },
        AddEndpoint {
            endpoint: NewEndpoint,
        },
        RemoveEndpoint {
            node_id: u64,
            container_id: String,
            ifname: String,
        },
        PutPolicies {
            policies: Vec<NewPolicy>,
            now: i64,
        },
        DeletePolicy {
            name: String,
        },
        InstallGossipKey {
            key: GossipKey,
        },
        UseGossipKey {
            id: u32,
        },
        RemoveGossipKey {
            id: u32,
        },
        Batch(Vec<OldCommand>),
    }
}

#[cfg(test)]
mod tests {
    use super::old_command::OldCommand;
    use super::RegistryV0;
    use crate::codec;
    use crate::registry::test_support::*;
    use crate::registry::{BatchItem, Command, LabelSet, Registry};

    #[test]
    fn t90_a_flat_batch_written_by_the_old_type_decodes_to_the_same_commands() {
        let web = LabelSet::parse(&["app=web"]).unwrap();
        let old = OldCommand::Batch(vec![
            OldCommand::AllocateIdentity {
                labels: web.clone(),
            },
            OldCommand::RemoveNode { id: 4 },
            OldCommand::AdmitNode {
                token_id: "abcdef".into(),
                presented_hash: HASH_A.into(),
                node: new_node("n2"),
                now: T0,
            },
        ]);
        let bytes = bincode::serialize(&old).unwrap();
        let new: Command = codec::decode(&bytes, codec::MAX_LOG_ENTRY_BYTES).unwrap();
        assert_eq!(
            new,
            Command::Batch(vec![
                BatchItem::AllocateIdentity { labels: web },
                BatchItem::RemoveNode { id: 4 },
                BatchItem::AdmitNode {
                    token_id: "abcdef".into(),
                    presented_hash: HASH_A.into(),
                    node: new_node("n2"),
                    now: T0,
                },
            ])
        );
        assert_eq!(bincode::serialize(&new).unwrap(), bytes, "and encodes back");
        // A plain command too.
        let plain = bincode::serialize(&OldCommand::DeletePolicy { name: "p".into() }).unwrap();
        assert_eq!(
            codec::decode::<Command>(&plain, 1024).unwrap(),
            Command::DeletePolicy { name: "p".into() }
        );
    }

    #[test]
    fn t91_a_nested_batch_10000_deep_fails_to_decode_at_once() {
        // Hand-built bytes of the old encoding (building 10,000 nested OldCommands and
        // encoding them would itself recurse that deep): each level is the Batch tag (14,
        // u32) and a one-element length (u64), around one innermost RemoveNode.
        const BATCH_TAG: u32 = 14;
        let depth = 10_000;
        let mut bytes = Vec::new();
        for _ in 0..depth {
            bytes.extend_from_slice(&BATCH_TAG.to_le_bytes());
            bytes.extend_from_slice(&1u64.to_le_bytes());
        }
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(&2u64.to_le_bytes());
        // The same shape, 3 deep, is what the old type writes.
        let three = OldCommand::Batch(vec![OldCommand::Batch(vec![OldCommand::Batch(vec![
            OldCommand::RemoveNode { id: 2 },
        ])])]);
        let mut expect = Vec::new();
        for _ in 0..3 {
            expect.extend_from_slice(&BATCH_TAG.to_le_bytes());
            expect.extend_from_slice(&1u64.to_le_bytes());
        }
        expect.extend_from_slice(&4u32.to_le_bytes());
        expect.extend_from_slice(&2u64.to_le_bytes());
        assert_eq!(bincode::serialize(&three).unwrap(), expect);

        // Run on a small stack: a decoder that recursed per level would overflow it.
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || codec::decode::<Command>(&bytes, codec::MAX_LOG_ENTRY_BYTES))
            .unwrap();
        let err = handle
            .join()
            .expect("decoding did not recurse")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("variant"), "names the refused variant: {msg}");
        let two = bincode::serialize(&OldCommand::Batch(vec![OldCommand::Batch(vec![])])).unwrap();
        assert!(codec::decode::<Command>(&two, 1024).is_err(), "even 2 deep");
    }

    #[test]
    fn t92_an_old_registry_converts_with_nothing_lost() {
        let mut r = bootstrapped();
        r.apply(Command::AllocateIdentity {
            labels: LabelSet::parse(&["app=web"]).unwrap(),
        });
        let bytes = bincode::serialize(&r.to_v0()).unwrap();
        let v0: RegistryV0 = bincode::deserialize(&bytes).unwrap();
        assert_eq!(Registry::from(v0), r);
    }

    #[test]
    fn t93_new_variants_are_appended_in_the_agreed_order() {
        use crate::registry::test_support::{cert_for, new_node, sha};
        let tag = |c: &Command| {
            u32::from_le_bytes(bincode::serialize(c).unwrap()[..4].try_into().unwrap())
        };
        let node = new_node("n2");
        let cmds: [(Command, u32); 6] = [
            (Command::Batch(vec![]), 14),
            (
                Command::AdmitSignedNode {
                    token_id: "t".into(),
                    presented_hash: sha(HASH_A),
                    node: node.clone(),
                    node_id: 2,
                    cert: cert_for(&node),
                    now: 0,
                },
                15,
            ),
            (
                Command::RecordCertificate {
                    node_id: 2,
                    cert: cert_for(&node),
                },
                16,
            ),
            (
                Command::AllocateIdentityFor {
                    labels: LabelSet::parse(&["a=b"]).unwrap(),
                    node_id: 1,
                },
                17,
            ),
            (
                Command::ReleaseIdentityFor {
                    labels: LabelSet::parse(&["a=b"]).unwrap(),
                    node_id: 1,
                },
                18,
            ),
            (Command::ForgetLegacyCaKey, 19),
        ];
        for (cmd, want) in cmds {
            assert_eq!(tag(&cmd), want, "{cmd:?}");
        }
        let phase = crate::registry::CaRotationPhase::Trusting;
        let cmds: [(Command, u32); 4] = [
            (
                Command::BeginCaRotation {
                    new_ca_cert_pem: "x".into(),
                    now: 0,
                },
                20,
            ),
            (Command::ReportCaRotation { node_id: 1, phase }, 21),
            (Command::AdvanceCaRotation { from: phase }, 22),
            (Command::FinishCaRotation, 23),
        ];
        for (cmd, want) in cmds {
            assert_eq!(tag(&cmd), want, "{cmd:?}");
        }
        // Issue 12. The tunnel commands of the shared contract come first (24-29, from
        // another branch); once they are merged RemoveEndpointAt follows them at 30.
        let remove_at = Command::RemoveEndpointAt {
            node_id: 1,
            container_id: "c".into(),
            ifname: "eth0".into(),
            now: 0,
        };
        assert_eq!(tag(&remove_at), 24, "{remove_at:?}");
    }
}
