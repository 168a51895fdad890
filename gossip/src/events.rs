//! The membership view by node id, and the events derived from its changes.
//!
//! chitchat knows nodes as (node id, generation, address): a node that restarts is a new
//! chitchat identity while its old one is still remembered as dead. The agent thinks in
//! node ids, so the view folds every generation of a node into one entry: alive if any
//! generation is alive (the newest one's metadata wins), down if it was seen alive and no
//! generation is alive now. A node never seen alive (a stranger, or one that never
//! authenticated) never enters the view.
//!
//! States: chitchat's phi-accrual detector has no "suspect" state (a node is live while
//! phi <= threshold and dead beyond), so neither does this view: [`MemberState::Alive`] or
//! [`MemberState::Down`]. Suspicion is continuous in phi and invisible outside chitchat.
//!
//! Pure functions; the IO that feeds them lives in [`crate::handle`].

use std::collections::BTreeMap;

use crate::meta::NodeMeta;

/// Liveness of a node as this node's gossip sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Heartbeats arrive: phi is below the threshold.
    Alive,
    /// Seen alive before, silent now for longer than the threshold allows.
    Down,
}

impl MemberState {
    /// `"alive"` or `"down"`, for the CLI and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Down => "down",
        }
    }
}

/// A change in membership, as the agent consumes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// A node became alive: first seen, or back after being down (or restarted).
    Up(NodeMeta),
    /// A node went down. Carries its last known metadata; `meta.id` is the node id.
    Down(NodeMeta),
    /// An alive node published new metadata.
    Changed(NodeMeta),
}

impl MemberEvent {
    /// The node the event is about.
    pub fn node_id(&self) -> u64 {
        self.meta().id
    }

    /// The node's metadata (the last known, for [`MemberEvent::Down`]).
    pub fn meta(&self) -> &NodeMeta {
        match self {
            MemberEvent::Up(m) | MemberEvent::Down(m) | MemberEvent::Changed(m) => m,
        }
    }
}

/// Every other node this node has seen alive, by node id, with its state and metadata.
pub type Members = BTreeMap<u64, (MemberState, NodeMeta)>;

/// One live chitchat identity, as the view needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveNode {
    /// chitchat's generation (the node's start time in ms).
    pub generation: u64,
    /// Its published metadata (with the node id).
    pub meta: NodeMeta,
}

/// The next view: every live identity (any generation) is alive; what was in `previous` and
/// is not live any more is down, unless chitchat has forgotten every generation of it
/// (`still_known` false: after the dead-node grace period), then it leaves the view.
pub fn next_view(
    previous: &Members,
    live: impl IntoIterator<Item = LiveNode>,
    still_known: impl Fn(u64) -> bool,
) -> Members {
    let mut newest: BTreeMap<u64, LiveNode> = BTreeMap::new();
    for node in live {
        match newest.get(&node.meta.id) {
            Some(n) if n.generation >= node.generation => {}
            _ => {
                newest.insert(node.meta.id, node);
            }
        }
    }
    let mut next: Members = newest
        .into_iter()
        .map(|(id, n)| (id, (MemberState::Alive, n.meta)))
        .collect();
    for (id, (_, meta)) in previous {
        if !next.contains_key(id) && still_known(*id) {
            next.insert(*id, (MemberState::Down, meta.clone()));
        }
    }
    next
}

/// The events that take a subscriber from `previous` to `next`. A node leaving the view
/// (forgotten after the grace period) raises nothing: it was reported down long before.
pub fn diff(previous: &Members, next: &Members) -> Vec<MemberEvent> {
    let mut events = Vec::new();
    for (id, (state, meta)) in next {
        let event = match (previous.get(id), state) {
            (None, MemberState::Alive) => Some(MemberEvent::Up(meta.clone())),
            (None, MemberState::Down) => Some(MemberEvent::Down(meta.clone())),
            (Some((before, _)), MemberState::Alive) if *before != MemberState::Alive => {
                Some(MemberEvent::Up(meta.clone()))
            }
            (Some((before, _)), MemberState::Down) if *before != MemberState::Down => {
                Some(MemberEvent::Down(meta.clone()))
            }
            (Some((_, m)), MemberState::Alive) if m != meta => {
                Some(MemberEvent::Changed(meta.clone()))
            }
            _ => None,
        };
        events.extend(event);
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64, health: &str) -> NodeMeta {
        NodeMeta {
            id,
            name: format!("n{id}"),
            health: health.into(),
            ..Default::default()
        }
    }

    fn live(id: u64, generation: u64, health: &str) -> LiveNode {
        LiveNode {
            generation,
            meta: meta(id, health),
        }
    }

    #[test]
    fn up_changed_down_back_up() {
        let v0 = Members::new();
        let v1 = next_view(&v0, [live(1, 10, "ok"), live(2, 10, "ok")], |_| true);
        assert_eq!(
            diff(&v0, &v1),
            vec![
                MemberEvent::Up(meta(1, "ok")),
                MemberEvent::Up(meta(2, "ok"))
            ]
        );
        let v2 = next_view(&v1, [live(1, 10, "ok"), live(2, 10, "disk full")], |_| true);
        assert_eq!(
            diff(&v1, &v2),
            vec![MemberEvent::Changed(meta(2, "disk full"))]
        );
        let v3 = next_view(&v2, [live(1, 10, "ok")], |_| true);
        assert_eq!(v3[&2], (MemberState::Down, meta(2, "disk full")));
        assert_eq!(
            diff(&v2, &v3),
            vec![MemberEvent::Down(meta(2, "disk full"))]
        );
        // Staying down raises nothing.
        let v4 = next_view(&v3, [live(1, 10, "ok")], |_| true);
        assert_eq!(diff(&v3, &v4), vec![]);
        // Restarted: a new generation comes up.
        let v5 = next_view(&v4, [live(1, 10, "ok"), live(2, 20, "ok")], |_| true);
        assert_eq!(diff(&v4, &v5), vec![MemberEvent::Up(meta(2, "ok"))]);
    }

    #[test]
    fn generations_fold_into_one_node_and_the_newest_wins() {
        let v = next_view(
            &Members::new(),
            [live(2, 20, "new"), live(2, 10, "old")],
            |_| true,
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[&2], (MemberState::Alive, meta(2, "new")));
    }

    #[test]
    fn forgotten_nodes_leave_quietly_and_strangers_never_enter() {
        let v1 = next_view(&Members::new(), [live(1, 10, "ok")], |_| true);
        let v2 = next_view(&v1, [], |_| true);
        assert_eq!(v2[&1].0, MemberState::Down);
        let v3 = next_view(&v2, [], |_| false);
        assert!(v3.is_empty());
        assert_eq!(diff(&v2, &v3), vec![]);
        // A node that was never live is not in the view, however known chitchat says it is.
        assert!(next_view(&Members::new(), [], |_| true).is_empty());
    }

    #[test]
    fn event_accessors() {
        let e = MemberEvent::Down(meta(7, "ok"));
        assert_eq!(e.node_id(), 7);
        assert_eq!(e.meta().name, "n7");
        assert_eq!(MemberState::Down.as_str(), "down");
    }
}
