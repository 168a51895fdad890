//! What this node does next about tunnel keys, from what it sees (pure).
//!
//! Every node: holds a secret for the pending epoch and for the active one (a node that was
//! down during a rotation publishes late into the active epoch), publishes its public key,
//! and reports the peers whose keys it installed once the agent has handed them to the
//! tunnel. The leader: begins an epoch (encryption just enabled, the active one older than
//! the rotation interval, or a node that held an active key was removed), activates the
//! pending one once every live node published and every publisher installed every other,
//! and retires superseded epochs a grace period after they were superseded. Secrets of
//! retired epochs are erased from disk.
//!
//! Actions are proposals: the registry checks them again at apply, so two leaders (one
//! stale) proposing the same step change nothing twice.

use std::collections::{BTreeMap, BTreeSet};

use membrane_consensus::registry::{Registry, TunnelEpoch};

/// What the key loop sees.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    pub reg: &'a Registry,
    pub me: u64,
    pub leader: bool,
    /// Nodes gossip reports alive (this one included).
    pub live: &'a BTreeSet<u64>,
    /// Epoch -> the public key of the secret this node holds for it (keystore).
    pub secrets: &'a BTreeMap<u32, [u8; 32]>,
    /// Seconds since the Unix epoch.
    pub now: i64,
    /// Seconds between rotations (`--key-rotation-interval`).
    pub rotation_interval: i64,
    /// Seconds a superseded epoch stays accepted.
    pub grace: i64,
}

/// One step, executed in order; a failed step ends the round (retried at the next).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TunnelAction {
    /// Generate a secret for `epoch`, store it, then publish its public key.
    Generate { epoch: u32 },
    /// Publish the public key of the stored secret for `epoch`.
    Publish { epoch: u32, public: [u8; 32] },
    /// Report the peers installed for `epoch`.
    Report { epoch: u32, peers: BTreeSet<u64> },
    /// Leader: begin a new epoch.
    Begin,
    /// Leader: activate the pending epoch.
    Activate { epoch: u32 },
    /// Leader: retire a superseded epoch.
    Retire { epoch: u32 },
    /// Erase this node's secret of a retired epoch.
    Erase { epoch: u32 },
}

/// Why the leader begins an epoch now, if it does.
pub fn begin_reason(inp: &PlanInput) -> Option<&'static str> {
    let enc = inp.reg.encryption();
    if !inp.leader || !enc.enabled || enc.pending().is_some() {
        return None;
    }
    let Some(active) = enc.active.and_then(|a| enc.epochs.get(&a)) else {
        return Some("encryption is enabled and no epoch is active");
    };
    if !active.removed.is_empty() {
        return Some("a node that held a key in the active epoch was removed");
    }
    let since = active.activated_at.unwrap_or(active.begun_at);
    if inp.now.saturating_sub(since) >= inp.rotation_interval {
        return Some("the active epoch is older than the rotation interval");
    }
    None
}

/// The live current nodes that have not published a key for `e`.
pub fn live_without_key(inp: &PlanInput, e: &TunnelEpoch) -> Vec<u64> {
    inp.live
        .iter()
        .copied()
        .filter(|id| inp.reg.node(*id).is_some() && !e.keys.contains_key(id))
        .collect()
}

pub fn plan(inp: &PlanInput) -> Vec<TunnelAction> {
    use TunnelAction::*;
    let enc = inp.reg.encryption();
    let mut out = Vec::new();
    let pending = enc.pending();
    // Epochs this node must hold a key in: the pending one, and the active one.
    let wanted: BTreeSet<u32> = pending.into_iter().chain(enc.active).collect();
    for epoch in &wanted {
        let Some(e) = enc.epochs.get(epoch) else {
            continue;
        };
        let registered = e.keys.get(&inp.me).map(|k| k.0);
        // A key is replaced only in a pending epoch; in the active one only a missing key
        // can still be published (the registry refuses the rest).
        let may_publish = !e.is_activated() || registered.is_none();
        match inp.secrets.get(epoch) {
            None if may_publish => out.push(Generate { epoch: *epoch }),
            Some(public) if registered.as_ref() != Some(public) && may_publish => {
                out.push(Publish {
                    epoch: *epoch,
                    public: *public,
                })
            }
            Some(public) if registered.as_ref() == Some(public) => {
                let peers: BTreeSet<u64> =
                    e.keys.keys().copied().filter(|p| *p != inp.me).collect();
                if e.installed.get(&inp.me) != Some(&peers) {
                    out.push(Report {
                        epoch: *epoch,
                        peers,
                    });
                }
            }
            _ => {}
        }
    }
    if inp.leader {
        if begin_reason(inp).is_some() {
            out.push(Begin);
        }
        if let Some((p, e)) = pending.and_then(|p| enc.epochs.get(&p).map(|e| (p, e))) {
            if !e.keys.is_empty()
                && live_without_key(inp, e).is_empty()
                && e.waiting_for().is_empty()
            {
                out.push(Activate { epoch: p });
            }
        }
        if let Some(active) = enc.active {
            for (n, e) in enc.epochs.range(..active) {
                if e.retire_after
                    .is_some_and(|t| inp.now >= t.saturating_add(inp.grace))
                {
                    out.push(Retire { epoch: *n });
                }
            }
        }
    }
    // Epoch numbers only grow: a stored epoch below the newest the registry knows and no
    // longer in it was retired.
    if let Some(newest) = enc.epochs.keys().next_back() {
        for epoch in inp.secrets.keys() {
            if epoch < newest && !enc.epochs.contains_key(epoch) {
                out.push(Erase { epoch: *epoch });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use membrane_consensus::registry::{Command, Registry};

    use super::TunnelAction::*;
    use super::*;
    use crate::tunnel::test_support::*;
    use crate::tunnel::view::tunnel_view;

    const DAY: i64 = 86_400;

    struct Node {
        id: u64,
        secrets: BTreeMap<u32, [u8; 32]>,
        /// Secrets generated so far: every generated key differs.
        generated: u8,
    }

    fn input<'a>(
        reg: &'a Registry,
        n: &'a Node,
        leader: bool,
        live: &'a BTreeSet<u64>,
        now: i64,
    ) -> PlanInput<'a> {
        PlanInput {
            reg,
            me: n.id,
            leader,
            live,
            secrets: &n.secrets,
            now,
            rotation_interval: DAY,
            grace: 30,
        }
    }

    /// Executes one node's actions against the registry, as the control loop would; the
    /// generated "secret" of node n for epoch e has the public key `test_key(n, e)`.
    fn step(
        r: &mut Registry,
        n: &mut Node,
        leader: bool,
        live: &BTreeSet<u64>,
        now: i64,
    ) -> Vec<TunnelAction> {
        let actions = plan(&input(r, n, leader, live, now));
        for a in &actions {
            let cmd = match a {
                Generate { epoch } => {
                    n.generated += 1;
                    let mut key = test_key(n.id, *epoch);
                    key[2] = n.generated;
                    n.secrets.insert(*epoch, key);
                    Command::PublishTunnelKey {
                        node_id: n.id,
                        epoch: *epoch,
                        public: membrane_consensus::registry::X25519Public(key),
                    }
                }
                Publish { epoch, public } => Command::PublishTunnelKey {
                    node_id: n.id,
                    epoch: *epoch,
                    public: membrane_consensus::registry::X25519Public(*public),
                },
                Report { epoch, peers } => Command::ReportTunnelEpoch {
                    node_id: n.id,
                    epoch: *epoch,
                    peers: peers.clone(),
                },
                Begin => Command::BeginTunnelEpoch { now },
                Activate { epoch } => Command::ActivateTunnelEpoch { epoch: *epoch, now },
                Retire { epoch } => Command::RetireTunnelEpoch { epoch: *epoch },
                Erase { epoch } => {
                    n.secrets.remove(epoch);
                    continue;
                }
            };
            r.apply(cmd).into_result().unwrap();
        }
        actions
    }

    fn nodes(ids: [u64; 3]) -> Vec<Node> {
        ids.iter()
            .map(|id| Node {
                id: *id,
                secrets: BTreeMap::new(),
                generated: 0,
            })
            .collect()
    }

    fn live(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    /// One round: every node in `up` plans and acts, node 1 (index 0) leading.
    fn round(r: &mut Registry, ns: &mut [Node], up: &[u64], now: i64) {
        let l = live(up);
        for n in ns.iter_mut().filter(|n| up.contains(&n.id)) {
            let leader = n.id == 1;
            step(r, n, leader, &l, now);
        }
    }

    #[test]
    fn cilium_44335_a_new_key_is_never_used_before_every_node_installed_it() {
        let (mut r, ids) = three_nodes();
        let mut ns = nodes(ids);
        let all = live(&ids);
        // The leader begins and publishes; nothing activates while the others have not.
        assert_eq!(step(&mut r, &mut ns[0], true, &all, 0), vec![Begin]);
        step(&mut r, &mut ns[0], true, &all, 0);
        assert_eq!(r.encryption().pending(), Some(1));
        // Node 2 publishes; node 3 not yet: no activation, and no view sends with epoch 1.
        step(&mut r, &mut ns[1], false, &all, 0);
        step(&mut r, &mut ns[0], true, &all, 0);
        step(&mut r, &mut ns[1], false, &all, 0);
        assert!(!step(&mut r, &mut ns[0], true, &all, 0).contains(&Activate { epoch: 1 }));
        assert_eq!(tunnel_view(&r, 1, 1).ready().count(), 0);
        // Node 3 publishes and reports; node 1 and 2 have not installed node 3 yet.
        step(&mut r, &mut ns[2], false, &all, 0);
        step(&mut r, &mut ns[2], false, &all, 0);
        let leader = plan(&input(&r, &ns[0], true, &all, 0));
        assert!(!leader.contains(&Activate { epoch: 1 }), "{leader:?}");
        // Every node installs every peer; then, and only then, the leader activates.
        step(&mut r, &mut ns[1], false, &all, 0);
        let acts = step(&mut r, &mut ns[0], true, &all, 0);
        assert!(!acts.contains(&Activate { epoch: 1 }), "{acts:?}");
        let acts = step(&mut r, &mut ns[0], true, &all, 0);
        assert!(acts.contains(&Activate { epoch: 1 }), "{acts:?}");
        let e = &r.encryption().epochs[&1];
        assert!(e.waiting_for().is_empty());
        for id in ids {
            assert_eq!(tunnel_view(&r, id, 1).ready().count(), 2);
        }
    }

    #[test]
    fn cilium_37920_a_node_still_on_old_keys_keeps_working_while_others_move() {
        let (mut r, ids) = three_nodes();
        let mut ns = nodes(ids);
        for _ in 0..4 {
            round(&mut r, &mut ns, &ids, 0);
        }
        assert_eq!(r.encryption().active, Some(1));
        // A day later the leader rotates. Node 3 is slow: it publishes but has not reported.
        let l = live(&ids);
        step(&mut r, &mut ns[0], true, &l, DAY);
        assert_eq!(r.encryption().pending(), Some(2));
        step(&mut r, &mut ns[0], true, &l, DAY);
        step(&mut r, &mut ns[1], false, &l, DAY);
        let slow = plan(&input(&r, &ns[2], false, &l, DAY));
        assert_eq!(slow, vec![Generate { epoch: 2 }]);
        step(&mut r, &mut ns[2], false, &l, DAY);
        step(&mut r, &mut ns[0], true, &l, DAY);
        step(&mut r, &mut ns[1], false, &l, DAY);
        // Node 3 has not installed the others' epoch-2 keys: no activation, everyone still
        // sends with 1 and accepts 1 and 2.
        let acts = step(&mut r, &mut ns[0], true, &l, DAY);
        assert!(!acts.contains(&Activate { epoch: 2 }), "{acts:?}");
        for id in ids {
            let v = tunnel_view(&r, id, 1);
            for p in v.peers.values() {
                assert_eq!(p.send_epoch, Some(1));
            }
        }
        assert_eq!(
            tunnel_view(&r, 3, 1).peers[&1]
                .accept
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
        // Node 3 catches up; the leader activates; epoch 1 stays accepted for the grace
        // period, then is retired and its secrets erased everywhere.
        step(&mut r, &mut ns[2], false, &l, DAY);
        let acts = step(&mut r, &mut ns[0], true, &l, DAY + 1);
        assert!(acts.contains(&Activate { epoch: 2 }), "{acts:?}");
        assert!(!step(&mut r, &mut ns[0], true, &l, DAY + 10).contains(&Retire { epoch: 1 }));
        assert!(tunnel_view(&r, 2, 1).peers[&3].accept.contains_key(&1));
        assert!(step(&mut r, &mut ns[0], true, &l, DAY + 31).contains(&Retire { epoch: 1 }));
        for n in ns.iter_mut() {
            let leader = n.id == 1;
            step(&mut r, n, leader, &l, DAY + 32);
            assert_eq!(n.secrets.keys().copied().collect::<Vec<_>>(), vec![2]);
        }
    }

    #[test]
    fn cilium_25492_a_rebooted_node_key_propagates() {
        let (mut r, ids) = three_nodes();
        let mut ns = nodes(ids);
        let l = live(&ids);
        step(&mut r, &mut ns[0], true, &l, 0);
        round(&mut r, &mut ns, &ids, 0);
        round(&mut r, &mut ns, &ids, 0);
        // Node 2 reboots having lost its pending secret (it was never written, say): it
        // generates a new one; the reports that installed its old key are void, and the
        // epoch does not activate until everyone installed the new key.
        assert_eq!(r.encryption().active, None);
        assert!(r.encryption().epochs[&1].waiting_for().is_empty());
        ns[1].secrets.clear();
        assert_eq!(
            plan(&input(&r, &ns[1], false, &l, 0)),
            vec![Generate { epoch: 1 }]
        );
        step(&mut r, &mut ns[1], false, &l, 0);
        assert_eq!(r.encryption().epochs[&1].keys[&2].0, ns[1].secrets[&1]);
        assert!(!plan(&input(&r, &ns[0], true, &l, 0)).contains(&Activate { epoch: 1 }));
        for _ in 0..3 {
            round(&mut r, &mut ns, &ids, 0);
        }
        assert_eq!(r.encryption().active, Some(1));
        for id in ids {
            assert_eq!(tunnel_view(&r, id, 1).ready().count(), 2, "node {id}");
        }
    }

    #[test]
    fn a_node_down_during_a_rotation_catches_up_when_it_returns() {
        let (mut r, ids) = three_nodes();
        let mut ns = nodes(ids);
        for _ in 0..4 {
            round(&mut r, &mut ns, &ids, 0);
        }
        // Node 3 goes down; a rotation runs with the two live nodes and activates.
        for _ in 0..4 {
            round(&mut r, &mut ns, &[1, 2], DAY);
        }
        assert_eq!(r.encryption().active, Some(2));
        assert_eq!(tunnel_view(&r, 1, 1).peers[&3].send_epoch, Some(1));
        // Node 3 returns: publishes late into epoch 2, everyone installs it, all send with 2.
        let l = live(&ids);
        assert_eq!(
            plan(&input(&r, &ns[2], false, &l, DAY + 5)),
            vec![Generate { epoch: 2 }]
        );
        for _ in 0..3 {
            round(&mut r, &mut ns, &ids, DAY + 5);
        }
        for id in ids {
            for p in tunnel_view(&r, id, 1).peers.values() {
                assert_eq!(p.send_epoch, Some(2), "node {id} -> {}", p.node_id);
            }
        }
    }

    #[test]
    fn removing_a_node_that_held_an_active_key_begins_an_epoch() {
        let (mut r, ids) = three_nodes();
        let mut ns = nodes(ids);
        for _ in 0..4 {
            round(&mut r, &mut ns, &ids, 0);
        }
        let l = live(&[1, 2]);
        assert_eq!(begin_reason(&input(&r, &ns[0], true, &l, 10)), None);
        r.apply(Command::RemoveNode { id: 3 })
            .into_result()
            .unwrap();
        assert!(begin_reason(&input(&r, &ns[0], true, &l, 10)).is_some());
        assert_eq!(begin_reason(&input(&r, &ns[1], false, &l, 10)), None);
        for _ in 0..4 {
            round(&mut r, &mut ns, &[1, 2], 10);
        }
        assert_eq!(r.encryption().active, Some(2));
        assert_eq!(begin_reason(&input(&r, &ns[0], true, &l, 20)), None);
    }

    #[test]
    fn nothing_begins_while_disabled() {
        let (mut r, ids) = three_nodes();
        r.apply(Command::SetEncryption { enabled: false })
            .into_result()
            .unwrap();
        let ns = nodes(ids);
        let l = live(&ids);
        assert!(plan(&input(&r, &ns[0], true, &l, 0)).is_empty());
    }
}
