//! Keeps the Raft membership in step with the registry, on the leader.
//!
//! Every registered node becomes a learner; learners that have caught up are promoted until
//! there are `target_voters` voters (3 by default). Deciding is pure ([`plan`]); acting on
//! the decision is the loop in [`run`]. The gossip issue extends this into autopilot
//! (demoting dead voters, removing long-dead nodes).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ServerState};
use tracing::{debug, info, warn};

use super::registry_client::RegistryClient;

/// How far behind the leader's last log index a learner may be and still be promoted.
pub const MAX_PROMOTION_LAG: u64 = 50;

/// One change to the membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    AddLearner { id: u64, addr: String },
    /// Make these the voters (the current voters plus caught-up learners).
    SetVoters(BTreeSet<u64>),
}

/// What the leader sees when it decides.
pub struct View<'a> {
    /// Registered nodes: id -> RPC address.
    pub registered: &'a BTreeMap<u64, String>,
    pub voters: &'a BTreeSet<u64>,
    pub learners: &'a BTreeSet<u64>,
    /// Last log index each follower or learner is known to hold.
    pub matched: &'a BTreeMap<u64, u64>,
    pub last_log_index: u64,
    pub target_voters: usize,
}

/// Decides the next membership changes. Lowest node ids are promoted first, so every
/// leader makes the same choice.
pub fn plan(v: &View) -> Vec<Action> {
    let mut actions = Vec::new();
    for (id, addr) in v.registered {
        if !v.voters.contains(id) && !v.learners.contains(id) {
            actions.push(Action::AddLearner { id: *id, addr: addr.clone() });
        }
    }
    if v.voters.len() < v.target_voters {
        let ready: Vec<u64> = v
            .learners
            .iter()
            .filter(|id| v.registered.contains_key(id))
            .filter(|id| v.matched.get(id).is_some_and(|m| m + MAX_PROMOTION_LAG >= v.last_log_index))
            .copied()
            .take(v.target_voters - v.voters.len())
            .collect();
        if !ready.is_empty() {
            let mut voters = v.voters.clone();
            voters.extend(ready);
            actions.push(Action::SetVoters(voters));
        }
    }
    actions
}

/// Runs the reconciler until the process ends. Does nothing on nodes that do not lead.
pub async fn run(client: Arc<RegistryClient>, target_voters: usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let metrics = client.raft().metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            continue;
        }
        let registered: BTreeMap<u64, String> = client.local(|r| r.nodes().map(|n| (n.id, n.rpc_addr.clone())).collect());
        let (voters, learners) = client.membership();
        let matched: BTreeMap<u64, u64> = metrics
            .replication
            .as_ref()
            .map(|r| r.iter().filter_map(|(id, log)| log.map(|l| (*id, l.index))).collect())
            .unwrap_or_default();
        let view = View {
            registered: &registered,
            voters: &voters,
            learners: &learners,
            matched: &matched,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            target_voters,
        };
        for action in plan(&view) {
            debug!(?action, "membership change");
            let result = match &action {
                Action::AddLearner { id, addr } => {
                    client.raft().add_learner(*id, BasicNode::new(addr), false).await.map(|_| ())
                }
                Action::SetVoters(voters) => {
                    client.raft().change_membership(voters.clone(), true).await.map(|_| ())
                }
            };
            match result {
                Ok(()) => info!(?action, "membership changed"),
                Err(e) => {
                    warn!(?action, error = %e, "membership change failed; will retry");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    fn registered(n: u64) -> BTreeMap<u64, String> {
        (1..=n).map(|i| (i, format!("10.0.0.{i}:7700"))).collect()
    }

    #[test]
    fn new_nodes_become_learners() {
        let reg = registered(2);
        let actions = plan(&View {
            registered: &reg,
            voters: &ids(&[1]),
            learners: &ids(&[]),
            matched: &BTreeMap::new(),
            last_log_index: 10,
            target_voters: 3,
        });
        assert_eq!(actions, vec![Action::AddLearner { id: 2, addr: "10.0.0.2:7700".into() }]);
    }

    #[test]
    fn caught_up_learners_are_promoted_up_to_the_target() {
        let reg = registered(5);
        let matched: BTreeMap<u64, u64> = [(2, 100), (3, 100), (4, 100), (5, 100)].into();
        let actions = plan(&View {
            registered: &reg,
            voters: &ids(&[1]),
            learners: &ids(&[2, 3, 4, 5]),
            matched: &matched,
            last_log_index: 100,
            target_voters: 3,
        });
        assert_eq!(actions, vec![Action::SetVoters(ids(&[1, 2, 3]))]);
    }

    #[test]
    fn lagging_learners_wait() {
        let reg = registered(3);
        let matched: BTreeMap<u64, u64> = [(2, 10), (3, 990)].into();
        let actions = plan(&View {
            registered: &reg,
            voters: &ids(&[1]),
            learners: &ids(&[2, 3]),
            matched: &matched,
            last_log_index: 1000,
            target_voters: 3,
        });
        assert_eq!(actions, vec![Action::SetVoters(ids(&[1, 3]))]);
    }

    #[test]
    fn a_full_voter_set_is_left_alone() {
        let reg = registered(4);
        let matched: BTreeMap<u64, u64> = [(4, 10)].into();
        let actions = plan(&View {
            registered: &reg,
            voters: &ids(&[1, 2, 3]),
            learners: &ids(&[4]),
            matched: &matched,
            last_log_index: 10,
            target_voters: 3,
        });
        assert!(actions.is_empty());
    }
}
