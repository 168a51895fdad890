//! Autopilot: keeps the Raft membership in step with the registry and with liveness, on the
//! leader.
//!
//! - Every registered node becomes a learner; caught-up, live learners are promoted (lowest
//!   id first) until there are `target_voters` voters.
//! - A voter that gossip has reported down for longer than `voter_down_after` is replaced by
//!   a live, caught-up learner in one membership change. Without such a learner it stays: a
//!   dead voter still counts towards a quorum only as a missing vote, and removing it would
//!   shrink the cluster's fault tolerance without the operator asking.
//! - A node down for longer than `remove_after` is deregistered (its pod CIDR freed); a
//!   member that is no longer registered (autopilot or `membrane node remove`) leaves the
//!   membership — never the last voter, and never in a way that leaves fewer live voters
//!   than a quorum of the new voter set.
//!
//! Deciding is pure ([`plan`], unit-tested); acting is the loop in [`run`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use membrane_consensus::Command;
use openraft::{BasicNode, ChangeMembers, ServerState};
use tracing::{debug, info, warn};

use crate::cluster::gossip::{GossipSlot, Liveness};
use crate::registry::client::RegistryClient;

/// How far behind the leader's last log index a learner may be and still be promoted.
pub const MAX_PROMOTION_LAG: u64 = 50;

/// Autopilot settings.
#[derive(Clone, Debug)]
pub struct AutopilotConfig {
    pub target_voters: usize,
    pub voter_down_after: Duration,
    pub remove_after: Duration,
}

impl Default for AutopilotConfig {
    fn default() -> Self {
        AutopilotConfig {
            target_voters: 3,
            voter_down_after: Duration::from_secs(10),
            remove_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// One change decided by the autopilot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    AddLearner {
        id: u64,
        addr: String,
    },
    /// Make these the voters.
    SetVoters(BTreeSet<u64>),
    /// Remove these non-voters from the membership.
    RemoveLearners(BTreeSet<u64>),
    /// Remove a long-dead node from the registry.
    Deregister(u64),
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
    /// Nodes reported down, and for how long.
    pub down_for: &'a BTreeMap<u64, Duration>,
    /// The deciding node (the leader), which is alive by definition.
    pub leader: u64,
    pub config: &'a AutopilotConfig,
}

impl View<'_> {
    fn is_live(&self, id: u64) -> bool {
        id == self.leader || !self.down_for.contains_key(&id)
    }

    fn down_longer_than(&self, id: u64, d: Duration) -> bool {
        id != self.leader && self.down_for.get(&id).is_some_and(|t| *t > d)
    }

    /// Live, registered learners that have caught up, lowest id first.
    fn ready_learners(&self) -> Vec<u64> {
        self.learners
            .iter()
            .copied()
            .filter(|id| self.registered.contains_key(id) && self.is_live(*id))
            .filter(|id| {
                self.matched
                    .get(id)
                    .is_some_and(|m| m + MAX_PROMOTION_LAG >= self.last_log_index)
            })
            .collect()
    }

    /// Whether `voters` keeps enough live members to commit (a majority of itself).
    fn has_live_quorum(&self, voters: &BTreeSet<u64>) -> bool {
        let live = voters.iter().filter(|id| self.is_live(**id)).count();
        !voters.is_empty() && live > voters.len() / 2
    }
}

/// Decides the next membership changes.
pub fn plan(v: &View) -> Vec<Action> {
    let mut actions = Vec::new();
    let c = v.config;

    // Long-dead nodes leave the registry (then the membership, below, on a later round).
    for id in v.registered.keys() {
        if v.down_longer_than(*id, c.remove_after) {
            actions.push(Action::Deregister(*id));
        }
    }

    for (id, addr) in v.registered {
        if !v.voters.contains(id)
            && !v.learners.contains(id)
            && !v.down_longer_than(*id, c.remove_after)
        {
            actions.push(Action::AddLearner {
                id: *id,
                addr: addr.clone(),
            });
        }
    }

    // Members that are no longer registered leave: learners at once, voters if safe.
    let gone_learners: BTreeSet<u64> = v
        .learners
        .iter()
        .copied()
        .filter(|id| !v.registered.contains_key(id))
        .collect();
    if !gone_learners.is_empty() {
        actions.push(Action::RemoveLearners(gone_learners));
    }

    // Without a live quorum nothing can commit, a membership change included.
    if !v.has_live_quorum(v.voters) {
        return actions;
    }
    let mut ready = v.ready_learners().into_iter();
    let mut voters = v.voters.clone();
    // Voters to replace: unregistered ones, and ones down past the threshold.
    let leaving: Vec<u64> = v
        .voters
        .iter()
        .copied()
        .filter(|id| !v.registered.contains_key(id) || v.down_longer_than(*id, c.voter_down_after))
        .collect();
    for id in leaving {
        let registered = v.registered.contains_key(&id);
        let mut next = voters.clone();
        next.remove(&id);
        match ready.next() {
            Some(learner) => {
                next.insert(learner);
            }
            // A registered but dead voter is only ever replaced, never just dropped.
            None if registered => continue,
            None => {}
        }
        if v.has_live_quorum(&next) {
            voters = next;
        }
    }
    // Grow to the target with caught-up learners.
    while voters.len() < c.target_voters {
        match ready.next() {
            Some(l) if !voters.contains(&l) => {
                voters.insert(l);
            }
            Some(_) => continue,
            None => break,
        }
    }
    if voters != *v.voters && !voters.is_empty() {
        actions.push(Action::SetVoters(voters));
    }
    actions
}

/// Runs the autopilot until the process ends. Does nothing on nodes that do not lead.
/// A node it deregisters is then cut off the gossip key too (rotation.rs), in the background.
pub async fn run(
    client: Arc<RegistryClient>,
    liveness: Liveness,
    config: AutopilotConfig,
    gossip: GossipSlot,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let metrics = client.raft().metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            continue;
        }
        let registered: BTreeMap<u64, String> =
            client.local(|r| r.nodes().map(|n| (n.id, n.rpc_addr.to_string())).collect());
        let (voters, learners) = client.membership();
        let matched: BTreeMap<u64, u64> = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter_map(|(id, log)| log.map(|l| (*id, l.index)))
                    .collect()
            })
            .unwrap_or_default();
        let down_for = liveness.down_for();
        let view = View {
            registered: &registered,
            voters: &voters,
            learners: &learners,
            matched: &matched,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            down_for: &down_for,
            leader: metrics.id,
            config: &config,
        };
        for action in plan(&view) {
            debug!(?action, "autopilot action");
            let raft = client.raft();
            let act = async {
                match &action {
                    Action::AddLearner { id, addr } => raft
                        .add_learner(*id, BasicNode::new(addr), false)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Action::SetVoters(voters) => raft
                        .change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), true)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Action::RemoveLearners(ids) => raft
                        .change_membership(ChangeMembers::RemoveNodes(ids.clone()), false)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Action::Deregister(id) => client
                        .write(Command::RemoveNode { id: *id })
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                }
            };
            // A change that cannot commit (the cluster lost its quorum meanwhile) must not
            // wedge the autopilot.
            let result = match tokio::time::timeout(Duration::from_secs(10), act).await {
                Ok(r) => r,
                Err(_) => Err("timed out after 10 s".to_string()),
            };
            match result {
                Ok(()) => {
                    info!(?action, "autopilot changed the cluster");
                    if let Action::Deregister(id) = action {
                        match gossip.get() {
                            Some(g) => crate::cluster::rotation::spawn_after_removal(
                                client.clone(),
                                g.clone(),
                                id,
                            ),
                            None => warn!(node_id = id, "gossip is not running; the gossip key was not rotated after the removal"),
                        }
                    }
                }
                Err(error) => {
                    warn!(?action, %error, "autopilot action failed; will retry");
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

    fn registered(v: &[u64]) -> BTreeMap<u64, String> {
        v.iter().map(|i| (*i, format!("10.0.0.{i}:7700"))).collect()
    }

    fn caught_up(v: &[u64], at: u64) -> BTreeMap<u64, u64> {
        v.iter().map(|i| (*i, at)).collect()
    }

    struct Case {
        registered: Vec<u64>,
        voters: Vec<u64>,
        learners: Vec<u64>,
        matched: BTreeMap<u64, u64>,
        down: Vec<(u64, u64)>,
    }

    fn run_plan(c: Case) -> Vec<Action> {
        let registered = registered(&c.registered);
        let down_for: BTreeMap<u64, Duration> = c
            .down
            .iter()
            .map(|(id, s)| (*id, Duration::from_secs(*s)))
            .collect();
        let config = AutopilotConfig::default();
        plan(&View {
            registered: &registered,
            voters: &ids(&c.voters),
            learners: &ids(&c.learners),
            matched: &c.matched,
            last_log_index: 100,
            down_for: &down_for,
            leader: 1,
            config: &config,
        })
    }

    #[test]
    fn t10_new_nodes_become_learners() {
        let a = run_plan(Case {
            registered: vec![1, 2],
            voters: vec![1],
            learners: vec![],
            matched: BTreeMap::new(),
            down: vec![],
        });
        assert_eq!(
            a,
            vec![Action::AddLearner {
                id: 2,
                addr: "10.0.0.2:7700".into()
            }]
        );
    }

    #[test]
    fn t11_caught_up_learners_are_promoted_up_to_the_target() {
        let a = run_plan(Case {
            registered: vec![1, 2, 3, 4, 5],
            voters: vec![1],
            learners: vec![2, 3, 4, 5],
            matched: caught_up(&[2, 3, 4, 5], 100),
            down: vec![],
        });
        assert_eq!(a, vec![Action::SetVoters(ids(&[1, 2, 3]))]);
    }

    #[test]
    fn t12_lagging_or_dead_learners_are_not_promoted() {
        let mut matched = caught_up(&[3, 4], 100);
        matched.insert(2, 10);
        let a = run_plan(Case {
            registered: vec![1, 2, 3, 4],
            voters: vec![1],
            learners: vec![2, 3, 4],
            matched,
            down: vec![(3, 1)],
        });
        assert_eq!(a, vec![Action::SetVoters(ids(&[1, 4]))]);
    }

    #[test]
    fn t13_a_full_voter_set_is_left_alone() {
        let a = run_plan(Case {
            registered: vec![1, 2, 3, 4],
            voters: vec![1, 2, 3],
            learners: vec![4],
            matched: caught_up(&[2, 3, 4], 100),
            down: vec![],
        });
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn t20_a_voter_down_past_the_threshold_is_replaced_by_a_live_learner() {
        let a = run_plan(Case {
            registered: vec![1, 2, 3, 4, 5],
            voters: vec![1, 2, 3],
            learners: vec![4, 5],
            matched: caught_up(&[2, 3, 4, 5], 100),
            down: vec![(2, 11)],
        });
        assert_eq!(a, vec![Action::SetVoters(ids(&[1, 3, 4]))]);
    }

    #[test]
    fn t21_a_voter_down_briefly_stays() {
        let a = run_plan(Case {
            registered: vec![1, 2, 3, 4],
            voters: vec![1, 2, 3],
            learners: vec![4],
            matched: caught_up(&[2, 3, 4], 100),
            down: vec![(2, 5)],
        });
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn t22_a_dead_voter_without_a_replacement_stays() {
        let a = run_plan(Case {
            registered: vec![1, 2, 3],
            voters: vec![1, 2, 3],
            learners: vec![],
            matched: caught_up(&[2, 3], 100),
            down: vec![(2, 60)],
        });
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn t23_no_voter_change_without_a_live_quorum() {
        // Two of three voters down: the old voter set could not commit the change.
        let a = run_plan(Case {
            registered: vec![1, 2, 3, 4],
            voters: vec![1, 2, 3],
            learners: vec![4],
            matched: caught_up(&[4], 100),
            down: vec![(2, 60), (3, 60)],
        });
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn t24_two_dead_voters_of_five_are_both_replaced() {
        let a = run_plan(Case {
            registered: vec![1, 2, 3, 4, 5, 6, 7],
            voters: vec![1, 2, 3, 4, 5],
            learners: vec![6, 7],
            matched: caught_up(&[2, 3, 4, 5, 6, 7], 100),
            down: vec![(2, 60), (3, 60)],
        });
        assert_eq!(a, vec![Action::SetVoters(ids(&[1, 4, 5, 6, 7]))]);
    }

    #[test]
    fn t30_long_dead_nodes_are_deregistered_and_unregistered_members_leave() {
        let day = 24 * 3600 + 1;
        let a = run_plan(Case {
            registered: vec![1, 2, 3, 5],
            voters: vec![1, 2, 3],
            learners: vec![4, 5],
            matched: caught_up(&[2, 3, 5], 100),
            down: vec![(5, day)],
        });
        assert_eq!(
            a,
            vec![Action::Deregister(5), Action::RemoveLearners(ids(&[4]))]
        );
    }

    #[test]
    fn t31_an_unregistered_voter_is_replaced_or_dropped() {
        let a = run_plan(Case {
            registered: vec![1, 2, 4],
            voters: vec![1, 2, 3],
            learners: vec![4],
            matched: caught_up(&[2, 4], 100),
            down: vec![],
        });
        assert_eq!(a, vec![Action::SetVoters(ids(&[1, 2, 4]))]);
        let a = run_plan(Case {
            registered: vec![1, 2],
            voters: vec![1, 2, 3],
            learners: vec![],
            matched: caught_up(&[2], 100),
            down: vec![],
        });
        assert_eq!(a, vec![Action::SetVoters(ids(&[1, 2]))]);
    }
}
