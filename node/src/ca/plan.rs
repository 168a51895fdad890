//! What this node does with the CA key, decided from its role and the registry (pure).
//!
//! The rules, in order:
//! 1. Until this node knows a Raft membership (before the cluster's first start commits
//!    one), nothing: an empty membership is not a demotion.
//! 2. A voter without the key takes it: from the registry of a cluster created before the
//!    key left it (the "legacy" key, if it is the CA of this node's `ca.crt`), else over
//!    mutual TLS from another voter.
//! 3. A node that is not a voter (a learner, demoted, or removed) deletes its copy.
//! 4. The leader of a cluster whose registry still holds the legacy key asks every voter
//!    whether it holds the key; once all do, it proposes `ForgetLegacyCaKey`.
//! 5. Once the registry no longer holds the key, a node whose Raft storage still does (the
//!    old snapshot, the old log entries, stale pages of the database) scrubs it: a new
//!    snapshot, the log purged up to it, the database rewritten.

use std::collections::BTreeMap;

/// This node's place in the current Raft membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// No membership yet (the cluster's first start has not committed one).
    Unknown,
    Voter,
    /// A learner, or no longer a member at all.
    NotVoter,
}

/// What the registry says about the legacy CA key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyKey {
    /// Not in the registry (a cluster created with the key on voters, or migrated).
    Absent,
    /// In the registry, and it is the key of this node's `ca.crt`.
    SameCa,
    /// In the registry, but not the key of this node's `ca.crt` (or unreadable): never used.
    Unusable,
}

/// What [`plan`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct CustodyView {
    pub role: Role,
    pub has_key: bool,
    pub legacy: LegacyKey,
    pub leader: bool,
    /// This node's registry copy has applied everything committed that it knows of, so
    /// `legacy` is the cluster's current answer and not one read half way through a replay.
    pub caught_up: bool,
    /// This node's Raft storage files contain a PEM private key.
    pub storage_holds_key: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustodyAction {
    /// Write the registry's legacy key to the key file.
    AdoptLegacyKey,
    /// Fetch the key from another voter.
    FetchFromVoter,
    /// Delete the key file.
    DeleteKey,
    /// Ask every voter whether it holds the key, and propose `ForgetLegacyCaKey` if all do.
    ForgetLegacyKeyWhenVotersHoldIt,
    /// Snapshot, purge the log, rewrite the database.
    ScrubStorage,
}

/// Decides the next custody steps; see the module documentation for the rules.
pub fn plan(v: &CustodyView) -> Vec<CustodyAction> {
    let mut actions = Vec::new();
    match (v.role, v.has_key) {
        (Role::Unknown, _) => return actions,
        (Role::Voter, false) if v.legacy == LegacyKey::SameCa => {
            actions.push(CustodyAction::AdoptLegacyKey)
        }
        (Role::Voter, false) => actions.push(CustodyAction::FetchFromVoter),
        (Role::NotVoter, true) => actions.push(CustodyAction::DeleteKey),
        _ => {}
    }
    if v.leader && v.role == Role::Voter && v.legacy == LegacyKey::SameCa {
        actions.push(CustodyAction::ForgetLegacyKeyWhenVotersHoldIt);
    }
    if v.caught_up && v.legacy == LegacyKey::Absent && v.storage_holds_key {
        actions.push(CustodyAction::ScrubStorage);
    }
    actions
}

/// What one voter answered when asked whether it holds the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoterKey {
    /// It holds the key of this CA hash.
    Holds(String),
    Lacks,
    /// It did not answer.
    Unreachable,
}

/// Whether the legacy key can leave the registry: every voter (there is at least one) holds
/// the key of the cluster CA `ca_hash`. One that did not answer counts as lacking it: the key
/// would be lost if that voter was the one left standing.
pub fn ready_to_forget(voters: &BTreeMap<u64, VoterKey>, ca_hash: &str) -> bool {
    !voters.is_empty()
        && voters
            .values()
            .all(|k| matches!(k, VoterKey::Holds(h) if h == ca_hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use CustodyAction::*;

    fn view(role: Role, has_key: bool, legacy: LegacyKey) -> CustodyView {
        CustodyView {
            role,
            has_key,
            legacy,
            leader: false,
            caught_up: true,
            storage_holds_key: false,
        }
    }

    #[test]
    fn t10_no_membership_means_no_action_even_with_a_key() {
        for has_key in [false, true] {
            for legacy in [LegacyKey::Absent, LegacyKey::SameCa] {
                let mut v = view(Role::Unknown, has_key, legacy);
                v.leader = true;
                v.storage_holds_key = true;
                assert_eq!(plan(&v), vec![], "{v:?}");
            }
        }
    }

    #[test]
    fn t11_a_voter_without_the_key_takes_it_from_the_registry_or_a_voter() {
        assert_eq!(
            plan(&view(Role::Voter, false, LegacyKey::SameCa)),
            vec![AdoptLegacyKey]
        );
        assert_eq!(
            plan(&view(Role::Voter, false, LegacyKey::Absent)),
            vec![FetchFromVoter]
        );
        // A registry key that is not our CA's is never written to disk.
        assert_eq!(
            plan(&view(Role::Voter, false, LegacyKey::Unusable)),
            vec![FetchFromVoter]
        );
        assert_eq!(plan(&view(Role::Voter, true, LegacyKey::Absent)), vec![]);
    }

    #[test]
    fn t12_a_learner_or_removed_node_deletes_its_copy() {
        assert_eq!(
            plan(&view(Role::NotVoter, true, LegacyKey::Absent)),
            vec![DeleteKey]
        );
        assert_eq!(
            plan(&view(Role::NotVoter, true, LegacyKey::SameCa)),
            vec![DeleteKey]
        );
        assert_eq!(
            plan(&view(Role::NotVoter, false, LegacyKey::SameCa)),
            vec![]
        );
    }

    #[test]
    fn t20_only_the_leader_moves_the_legacy_key_out_of_the_registry() {
        let mut v = view(Role::Voter, true, LegacyKey::SameCa);
        assert_eq!(plan(&v), vec![]);
        v.leader = true;
        assert_eq!(plan(&v), vec![ForgetLegacyKeyWhenVotersHoldIt]);
        v.has_key = false;
        assert_eq!(
            plan(&v),
            vec![AdoptLegacyKey, ForgetLegacyKeyWhenVotersHoldIt]
        );
        v.legacy = LegacyKey::Unusable;
        assert_eq!(
            plan(&v),
            vec![FetchFromVoter],
            "a foreign key is left alone"
        );
    }

    #[test]
    fn t30_storage_is_scrubbed_only_once_the_registry_forgot_the_key() {
        let mut v = view(Role::NotVoter, false, LegacyKey::SameCa);
        v.storage_holds_key = true;
        assert_eq!(
            plan(&v),
            vec![],
            "the registry still holds it: scrubbing now is futile"
        );
        v.legacy = LegacyKey::Absent;
        assert_eq!(plan(&v), vec![ScrubStorage]);
        v.caught_up = false;
        assert_eq!(
            plan(&v),
            vec![],
            "halfway through a replay the answer may change"
        );
        v.caught_up = true;
        v.storage_holds_key = false;
        assert_eq!(plan(&v), vec![]);
    }

    #[test]
    fn t40_forget_needs_every_voter_to_hold_the_same_key() {
        let h = "sha256:aa";
        let all = |k: VoterKey| BTreeMap::from([(1, VoterKey::Holds(h.into())), (2, k)]);
        assert!(ready_to_forget(&all(VoterKey::Holds(h.into())), h));
        assert!(!ready_to_forget(&all(VoterKey::Lacks), h));
        assert!(!ready_to_forget(&all(VoterKey::Unreachable), h));
        assert!(!ready_to_forget(
            &all(VoterKey::Holds("sha256:bb".into())),
            h
        ));
        assert!(!ready_to_forget(&BTreeMap::new(), h));
    }
}
