//! The role table of docs/security.md ("Who may call what") as code: one function per
//! service, pure, over the authenticated [`Caller`] and what the request claims.
//!
//! The local CLI does not appear here: its requests reach this node over the Unix socket and
//! are either applied here (this node leads) or forwarded with this node's certificate, so
//! they carry this node's role.

use membrane_consensus::network::Rpc;
use membrane_consensus::{Command, NodeId};

use super::{Caller, Denial, Role};
use crate::registry::query::{Query, QueryResult};

/// Raft RPCs. `claimed` is the leader id of the request's vote (AppendEntries,
/// InstallSnapshot) or the candidate (Vote).
///
/// - Every Raft RPC must speak for the node named in the certificate.
/// - Any current member (and, while this node's registry copy is empty, a member of its
///   join-time trust; and a node admitted after this copy) may send any Raft RPC. Not only
///   voters: a node that was down while a learner was promoted and became leader knows that
///   leader only as a learner until it has caught up, and it can catch up only from the
///   leader. openraft itself grants votes and accepts entries only by term and log.
pub fn raft(rpc: Rpc, caller: &Caller, claimed: NodeId) -> Result<(), Denial> {
    if claimed != caller.node_id {
        return Err(Denial::Impersonation {
            rpc,
            claimed,
            caller: caller.node_id,
        });
    }
    Ok(())
}

/// Who may propose a command through `Cluster.Write`.
enum Rule {
    /// Never over the network.
    Never,
    /// Voters only: admission, removal, tokens, gossip keys.
    Voter,
    /// Any member, for its own node only.
    OwnNode(NodeId),
    /// A voter, or the named node itself.
    VoterOrOwnNode(NodeId),
    /// Any member.
    Member,
}

fn rule<B>(cmd: &Command<B>) -> (&'static str, Rule) {
    match cmd {
        Command::Bootstrap { .. } => ("Bootstrap", Rule::Never),
        Command::CreateToken { .. } => ("CreateToken", Rule::Voter),
        Command::RevokeToken { .. } => ("RevokeToken", Rule::Voter),
        Command::AdmitNode { .. } => ("AdmitNode", Rule::Voter),
        // Only a holder of the CA key signs the certificate that this records.
        Command::AdmitSignedNode { .. } => ("AdmitSignedNode", Rule::Voter),
        Command::RemoveNode { .. } => ("RemoveNode", Rule::Voter),
        Command::InstallGossipKey { .. } => ("InstallGossipKey", Rule::Voter),
        Command::UseGossipKey { .. } => ("UseGossipKey", Rule::Voter),
        Command::RemoveGossipKey { .. } => ("RemoveGossipKey", Rule::Voter),
        Command::ForgetLegacyCaKey => ("ForgetLegacyCaKey", Rule::Voter),
        // A rotation is begun and moved on by voters (they hold the CA keys); each node
        // reports its own progress.
        Command::BeginCaRotation { .. } => ("BeginCaRotation", Rule::Voter),
        Command::AdvanceCaRotation { .. } => ("AdvanceCaRotation", Rule::Voter),
        Command::FinishCaRotation => ("FinishCaRotation", Rule::Voter),
        Command::ReportCaRotation { node_id, .. } => ("ReportCaRotation", Rule::OwnNode(*node_id)),
        // A voter records the renewals it signs; a node may record its own certificate
        // (the registry checks the key is the node's).
        Command::RecordCertificate { node_id, .. } => {
            ("RecordCertificate", Rule::VoterOrOwnNode(*node_id))
        }
        Command::AddEndpoint { endpoint } => ("AddEndpoint", Rule::OwnNode(endpoint.node_id)),
        Command::RemoveEndpoint { node_id, .. } => ("RemoveEndpoint", Rule::OwnNode(*node_id)),
        Command::RemoveEndpointAt { node_id, .. } => ("RemoveEndpointAt", Rule::OwnNode(*node_id)),
        Command::AllocateIdentityFor { node_id, .. } => {
            ("AllocateIdentityFor", Rule::OwnNode(*node_id))
        }
        Command::ReleaseIdentityFor { node_id, .. } => {
            ("ReleaseIdentityFor", Rule::OwnNode(*node_id))
        }
        Command::AllocateIdentity { .. } => ("AllocateIdentity", Rule::Member),
        Command::ReleaseIdentity { .. } => ("ReleaseIdentity", Rule::Member),
        Command::PutPolicies { .. } => ("PutPolicies", Rule::Member),
        Command::DeletePolicy { .. } => ("DeletePolicy", Rule::Member),
        // Checked item by item in `write`.
        Command::Batch(_) => ("Batch", Rule::Member),
    }
}

/// `Cluster.Write`: every command (each one inside a Batch too) must be allowed to `caller`.
/// Batches are flat by type ([`membrane_consensus::registry::BatchItem`]), so one level.
pub fn write(cmd: &Command, caller: &Caller) -> Result<(), Denial> {
    member(caller)?;
    match cmd {
        Command::Batch(items) => items.iter().try_for_each(|item| allowed(item, caller)),
        one => allowed(one, caller),
    }
}

fn allowed<B>(cmd: &Command<B>, caller: &Caller) -> Result<(), Denial> {
    let (command, rule) = rule(cmd);
    match rule {
        Rule::Never => Err(Denial::BootstrapOverRpc),
        Rule::Voter if caller.role != Role::Voter => Err(Denial::NeedsVoter {
            command,
            id: caller.node_id,
            role: caller.role,
        }),
        Rule::OwnNode(named) if named != caller.node_id => Err(Denial::ForeignNode {
            command,
            named,
            caller: caller.node_id,
        }),
        Rule::VoterOrOwnNode(named) if caller.role != Role::Voter && named != caller.node_id => {
            Err(Denial::ForeignNode {
                command,
                named,
                caller: caller.node_id,
            })
        }
        Rule::Voter | Rule::OwnNode(_) | Rule::VoterOrOwnNode(_) | Rule::Member => Ok(()),
    }
}

/// `Cluster.Read`: any member; answers go through [`redact`].
pub fn read(_query: &Query, caller: &Caller) -> Result<(), Denial> {
    member(caller)
}

/// What a read answer may carry over the network: token records without their secret hash
/// (a hash is enough to forge the `presented_hash` of an AdmitNode).
pub fn redact(result: QueryResult) -> QueryResult {
    match result {
        QueryResult::Tokens(tokens) => QueryResult::Tokens(
            tokens
                .into_iter()
                .map(|mut t| {
                    t.secret_hash = String::new();
                    t
                })
                .collect(),
        ),
        other => other,
    }
}

/// The Cluster service is for nodes of this node's registry, not for join-time trust.
fn member(caller: &Caller) -> Result<(), Denial> {
    match caller.role {
        Role::JoinTrusted | Role::AdmittedSinceOurCopy => Err(Denial::NotYetMember {
            id: caller.node_id,
            role: caller.role,
        }),
        Role::Voter | Role::Learner | Role::Member => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use membrane_consensus::registry::{BatchItem, LabelSet, NewEndpoint, TokenRecord};

    fn caller(node_id: NodeId, role: Role) -> Caller {
        Caller { node_id, role }
    }

    const ALL_ROLES: [Role; 5] = [
        Role::Voter,
        Role::Learner,
        Role::Member,
        Role::JoinTrusted,
        Role::AdmittedSinceOurCopy,
    ];

    #[test]
    fn t10_raft_rpcs_must_speak_for_the_certificates_node() {
        for rpc in [Rpc::AppendEntries, Rpc::Vote, Rpc::InstallSnapshot] {
            for role in ALL_ROLES {
                assert!(
                    matches!(
                        raft(rpc, &caller(3, role), 2),
                        Err(Denial::Impersonation {
                            claimed: 2,
                            caller: 3,
                            ..
                        })
                    ),
                    "{rpc:?} {role:?}"
                );
            }
        }
    }

    #[test]
    fn t11_every_member_role_may_replicate_for_itself() {
        for rpc in [Rpc::AppendEntries, Rpc::InstallSnapshot, Rpc::Vote] {
            for role in ALL_ROLES {
                assert_eq!(raft(rpc, &caller(2, role), 2), Ok(()), "{rpc:?} {role:?}");
            }
        }
    }

    #[test]
    fn t12_any_member_may_ask_for_its_own_vote() {
        for role in ALL_ROLES {
            assert_eq!(raft(Rpc::Vote, &caller(5, role), 5), Ok(()), "{role:?}");
        }
    }

    fn add_endpoint(node_id: NodeId) -> Command {
        Command::AddEndpoint {
            endpoint: NewEndpoint {
                node_id,
                container_id: "c".into(),
                ifname: "eth0".into(),
                netns: "/run/netns/c".into(),
                labels: LabelSet::parse(&["app=a".to_string()]).unwrap(),
                now: 0,
            },
        }
    }

    fn remove_endpoint(node_id: NodeId) -> Command {
        Command::RemoveEndpoint {
            node_id,
            container_id: "c".into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn t20_endpoint_commands_must_name_the_callers_node() {
        for role in [Role::Voter, Role::Learner, Role::Member] {
            assert_eq!(write(&add_endpoint(4), &caller(4, role)), Ok(()));
            assert_eq!(write(&remove_endpoint(4), &caller(4, role)), Ok(()));
            assert!(matches!(
                write(&add_endpoint(1), &caller(4, role)),
                Err(Denial::ForeignNode {
                    named: 1,
                    caller: 4,
                    ..
                })
            ));
            assert!(matches!(
                write(&remove_endpoint(1), &caller(4, role)),
                Err(Denial::ForeignNode {
                    named: 1,
                    caller: 4,
                    ..
                })
            ));
        }
    }

    #[test]
    fn t21_admission_tokens_and_gossip_keys_need_a_voter() {
        let token = TokenRecord {
            id: "abcdef".into(),
            secret_hash: "x".into(),
            description: String::new(),
            created_at: 0,
            expires_at: 1,
            max_uses: 1,
            uses: 0,
            revoked: false,
        };
        let admin = [
            Command::CreateToken { token },
            Command::RevokeToken {
                id: "abcdef".into(),
            },
            Command::RemoveNode { id: 1 },
            Command::UseGossipKey { id: 2 },
            Command::RemoveGossipKey { id: 2 },
        ];
        for cmd in &admin {
            assert_eq!(write(cmd, &caller(2, Role::Voter)), Ok(()), "{cmd:?}");
            for role in [Role::Learner, Role::Member] {
                assert!(
                    matches!(write(cmd, &caller(2, role)), Err(Denial::NeedsVoter { .. })),
                    "{cmd:?} {role:?}"
                );
            }
        }
    }

    #[test]
    fn t22_bootstrap_never_and_join_time_callers_not_at_all() {
        let labels = LabelSet::parse(&["app=a".to_string()]).unwrap();
        let alloc = Command::AllocateIdentity { labels };
        for role in [Role::Voter, Role::Learner, Role::Member] {
            assert_eq!(write(&alloc, &caller(2, role)), Ok(()));
        }
        assert!(matches!(
            write(&alloc, &caller(2, Role::JoinTrusted)),
            Err(Denial::NotYetMember { .. })
        ));
        assert!(matches!(
            read(&Query::Nodes, &caller(2, Role::JoinTrusted)),
            Err(Denial::NotYetMember { .. })
        ));
        assert_eq!(read(&Query::Tokens, &caller(2, Role::Learner)), Ok(()));
    }

    fn item(cmd: Command) -> BatchItem {
        BatchItem::try_from(cmd).expect("not a batch")
    }

    #[test]
    fn t23_a_batch_is_checked_item_by_item() {
        let ok = Command::Batch(vec![item(add_endpoint(3)), item(remove_endpoint(3))]);
        assert_eq!(write(&ok, &caller(3, Role::Learner)), Ok(()));
        let hidden = Command::Batch(vec![item(add_endpoint(3)), item(remove_endpoint(1))]);
        assert!(matches!(
            write(&hidden, &caller(3, Role::Voter)),
            Err(Denial::ForeignNode { named: 1, .. })
        ));
        // A voter-only command anywhere in a batch makes the batch voter-only.
        let mixed = Command::Batch(vec![
            item(add_endpoint(3)),
            item(Command::RemoveNode { id: 2 }),
        ]);
        assert_eq!(write(&mixed, &caller(3, Role::Voter)), Ok(()));
        assert!(matches!(
            write(&mixed, &caller(3, Role::Learner)),
            Err(Denial::NeedsVoter {
                command: "RemoveNode",
                ..
            })
        ));
    }

    #[test]
    fn t24_identity_references_and_certificates_belong_to_their_node() {
        let labels = LabelSet::parse(&["app=a".to_string()]).unwrap();
        let alloc = |node_id| Command::AllocateIdentityFor {
            labels: labels.clone(),
            node_id,
        };
        assert_eq!(write(&alloc(4), &caller(4, Role::Learner)), Ok(()));
        assert!(matches!(
            write(&alloc(1), &caller(4, Role::Voter)),
            Err(Denial::ForeignNode { named: 1, .. })
        ));
        assert!(matches!(
            write(&Command::ForgetLegacyCaKey, &caller(4, Role::Learner)),
            Err(Denial::NeedsVoter { .. })
        ));
    }

    #[test]
    fn t25_a_ca_rotation_is_driven_by_voters_and_reported_by_each_node() {
        use membrane_consensus::registry::CaRotationPhase::Trusting;
        let report = |node_id| Command::ReportCaRotation {
            node_id,
            phase: Trusting,
        };
        assert_eq!(write(&report(4), &caller(4, Role::Learner)), Ok(()));
        assert!(matches!(
            write(&report(1), &caller(4, Role::Voter)),
            Err(Denial::ForeignNode { named: 1, .. })
        ));
        for cmd in [
            Command::BeginCaRotation {
                new_ca_cert_pem: "x".into(),
                now: 0,
            },
            Command::AdvanceCaRotation { from: Trusting },
            Command::FinishCaRotation,
        ] {
            assert_eq!(write(&cmd, &caller(2, Role::Voter)), Ok(()));
            assert!(
                matches!(
                    write(&cmd, &caller(4, Role::Learner)),
                    Err(Denial::NeedsVoter { .. })
                ),
                "{cmd:?}"
            );
        }
    }

    #[test]
    fn t30_token_reads_never_carry_secret_hashes() {
        let t = TokenRecord {
            id: "abcdef".into(),
            secret_hash: "deadbeef".into(),
            description: "d".into(),
            created_at: 0,
            expires_at: 1,
            max_uses: 1,
            uses: 0,
            revoked: false,
        };
        let QueryResult::Tokens(out) = redact(QueryResult::Tokens(vec![t.clone()])) else {
            panic!("not tokens");
        };
        assert_eq!(out[0].secret_hash, "");
        assert_eq!(out[0].id, t.id);
        assert_eq!(out[0].max_uses, t.max_uses);
    }
}
