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
/// - AppendEntries and InstallSnapshot only from a voter (a leader is always one), or, while
///   this node's registry copy is empty, from a member of its join-time trust.
/// - Vote from any member: a node promoted to voter in an entry this node has not received
///   yet must still be able to win an election, or a cluster that lost its leader at that
///   moment could not elect one. openraft itself grants votes only by term and log.
pub fn raft(rpc: Rpc, caller: &Caller, claimed: NodeId) -> Result<(), Denial> {
    if claimed != caller.node_id {
        return Err(Denial::Impersonation {
            rpc,
            claimed,
            caller: caller.node_id,
        });
    }
    match (rpc, caller.role) {
        (Rpc::Vote, _) => Ok(()),
        (Rpc::AppendEntries | Rpc::InstallSnapshot, Role::Voter | Role::JoinTrusted) => Ok(()),
        (Rpc::AppendEntries | Rpc::InstallSnapshot, role) => Err(Denial::RaftNeedsVoter {
            rpc,
            id: caller.node_id,
            role,
        }),
    }
}

/// Who may propose a command through `Cluster.Write`.
enum Rule {
    /// Never over the network.
    Never,
    /// Voters only: admission, removal, tokens, gossip keys.
    Voter,
    /// Any member, for its own node only.
    OwnNode(NodeId),
    /// Any member.
    Member,
}

fn rule(cmd: &Command) -> (&'static str, Rule) {
    match cmd {
        Command::Bootstrap { .. } => ("Bootstrap", Rule::Never),
        Command::CreateToken { .. } => ("CreateToken", Rule::Voter),
        Command::RevokeToken { .. } => ("RevokeToken", Rule::Voter),
        Command::AdmitNode { .. } => ("AdmitNode", Rule::Voter),
        Command::RemoveNode { .. } => ("RemoveNode", Rule::Voter),
        Command::InstallGossipKey { .. } => ("InstallGossipKey", Rule::Voter),
        Command::UseGossipKey { .. } => ("UseGossipKey", Rule::Voter),
        Command::RemoveGossipKey { .. } => ("RemoveGossipKey", Rule::Voter),
        Command::AddEndpoint { endpoint } => ("AddEndpoint", Rule::OwnNode(endpoint.node_id)),
        Command::RemoveEndpoint { node_id, .. } => ("RemoveEndpoint", Rule::OwnNode(*node_id)),
        Command::AllocateIdentity { .. } => ("AllocateIdentity", Rule::Member),
        Command::ReleaseIdentity { .. } => ("ReleaseIdentity", Rule::Member),
        Command::PutPolicies { .. } => ("PutPolicies", Rule::Member),
        Command::DeletePolicy { .. } => ("DeletePolicy", Rule::Member),
        // Checked command by command in `write`.
        Command::Batch(_) => ("Batch", Rule::Member),
    }
}

/// `Cluster.Write`: every command (each one inside a Batch too) must be allowed to `caller`.
pub fn write(cmd: &Command, caller: &Caller) -> Result<(), Denial> {
    member(caller)?;
    // An explicit stack: a deeply nested Batch must not recurse on this thread.
    let mut pending = vec![cmd];
    while let Some(cmd) = pending.pop() {
        if let Command::Batch(inner) = cmd {
            pending.extend(inner);
            continue;
        }
        let (command, rule) = rule(cmd);
        match rule {
            Rule::Never => return Err(Denial::BootstrapOverRpc),
            Rule::Voter if caller.role != Role::Voter => {
                return Err(Denial::NeedsVoter {
                    command,
                    id: caller.node_id,
                    role: caller.role,
                })
            }
            Rule::OwnNode(named) if named != caller.node_id => {
                return Err(Denial::ForeignNode {
                    command,
                    named,
                    caller: caller.node_id,
                })
            }
            Rule::Voter | Rule::OwnNode(_) | Rule::Member => {}
        }
    }
    Ok(())
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
        Role::JoinTrusted => Err(Denial::NotYetMember {
            id: caller.node_id,
            role: caller.role,
        }),
        Role::Voter | Role::Learner | Role::Member => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use membrane_consensus::registry::{LabelSet, NewEndpoint, TokenRecord};

    fn caller(node_id: NodeId, role: Role) -> Caller {
        Caller { node_id, role }
    }

    const ALL_ROLES: [Role; 4] = [Role::Voter, Role::Learner, Role::Member, Role::JoinTrusted];

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
    fn t11_only_voters_and_join_time_members_replicate() {
        for rpc in [Rpc::AppendEntries, Rpc::InstallSnapshot] {
            assert_eq!(raft(rpc, &caller(2, Role::Voter), 2), Ok(()));
            assert_eq!(raft(rpc, &caller(2, Role::JoinTrusted), 2), Ok(()));
            for role in [Role::Learner, Role::Member] {
                assert_eq!(
                    raft(rpc, &caller(2, role), 2),
                    Err(Denial::RaftNeedsVoter { rpc, id: 2, role })
                );
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

    #[test]
    fn t23_a_batch_is_checked_command_by_command_however_deep() {
        let ok = Command::Batch(vec![add_endpoint(3), remove_endpoint(3)]);
        assert_eq!(write(&ok, &caller(3, Role::Learner)), Ok(()));
        let mut hidden = Command::Batch(vec![add_endpoint(3), remove_endpoint(1)]);
        for _ in 0..10_000 {
            hidden = Command::Batch(vec![hidden]);
        }
        assert!(matches!(
            write(&hidden, &caller(3, Role::Voter)),
            Err(Denial::ForeignNode { named: 1, .. })
        ));
        std::mem::forget(hidden); // dropping 10,000 nested Vecs recurses; not what is tested
        // A voter-only command anywhere in a batch makes the batch voter-only.
        let mixed = Command::Batch(vec![
            Command::Batch(vec![add_endpoint(3)]),
            Command::RemoveNode { id: 2 },
        ]);
        assert_eq!(write(&mixed, &caller(3, Role::Voter)), Ok(()));
        assert!(matches!(
            write(&mixed, &caller(3, Role::Learner)),
            Err(Denial::NeedsVoter { command: "RemoveNode", .. })
        ));
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
