//! Transparent encryption as a cluster setting, and the tunnel key epochs rotated through Raft.
//!
//! The lessons of Cilium's IPsec bugs are the rules here:
//!
//! - a key is never used to send before every node installed it (cilium #44335): nodes
//!   publish their public key for an epoch (`PublishTunnelKey`), install the receive side
//!   with every peer that published and report whom they installed (`ReportTunnelEpoch`);
//!   the epoch is activated (`ActivateTunnelEpoch`) only when every publisher reported every
//!   other publisher. Liveness is not in the registry: the proposer (the leader's agent)
//!   also waits for every live node to publish.
//! - a node on old keys keeps working while the others move on (cilium #37920): packets
//!   carry their epoch and every epoch that is not retired is accepted; an epoch is retired
//!   (`RetireTunnelEpoch`) only when it is older than the active one.
//! - a rebooted node's new key propagates (cilium #25492): a node may replace its key in a
//!   pending epoch (every report that installed the old key is then void), and a node that
//!   missed a rotation publishes late into the active epoch, where the peers install it and
//!   report again before anyone sends to it with that epoch.
//!
//! Removing a node drops its keys and reports from every epoch, and marks the epochs it held
//! a key in (`removed`) so that the leader begins a new one: a removed node must hold no
//! current key.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Registry, RegistryError, Response, X25519Public};

/// The cluster's encryption setting and its key epochs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// Whether node-to-node traffic goes through the tunnel.
    pub enabled: bool,
    /// Epochs not yet retired, by number. Numbers only grow and are never reused.
    pub epochs: BTreeMap<u32, TunnelEpoch>,
    /// The newest activated epoch: senders use it.
    pub active: Option<u32>,
}

/// One key epoch: every node's X25519 public key for it, and whom each node installed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelEpoch {
    /// Node id -> its public key for this epoch.
    pub keys: BTreeMap<u64, X25519Public>,
    /// Node id -> the peers whose keys it installed receive sessions for, in this epoch.
    pub installed: BTreeMap<u64, BTreeSet<u64>>,
    /// When the epoch was begun (the leader's clock).
    pub begun_at: i64,
    /// When it was activated; `None` while pending.
    pub activated_at: Option<i64>,
    /// When a newer epoch superseded it: the grace period before retiring counts from here.
    pub retire_after: Option<i64>,
    /// Nodes that held a key in this epoch once it was activated, and were removed since.
    pub removed: BTreeSet<u64>,
}

impl TunnelEpoch {
    /// Whether the epoch has been activated.
    pub fn is_activated(&self) -> bool {
        self.activated_at.is_some()
    }

    /// Publishers that have not reported installing every other publisher, in id order.
    pub fn waiting_for(&self) -> Vec<u64> {
        self.keys
            .keys()
            .copied()
            .filter(|id| {
                let installed = self.installed.get(id);
                self.keys
                    .keys()
                    .filter(|peer| *peer != id)
                    .any(|peer| !installed.is_some_and(|s| s.contains(peer)))
            })
            .collect()
    }
}

impl Encryption {
    /// The epoch begun and not yet activated, if any (there is at most one).
    pub fn pending(&self) -> Option<u32> {
        self.epochs
            .iter()
            .rev()
            .find(|(_, e)| !e.is_activated())
            .map(|(n, _)| *n)
    }

    /// The number the next epoch gets.
    fn next_epoch(&self) -> Option<u32> {
        match self.epochs.keys().next_back() {
            Some(last) => last.checked_add(1),
            None => Some(1),
        }
    }
}

fn refuse(msg: impl Into<String>) -> RegistryError {
    RegistryError::Encryption(msg.into())
}

impl Registry {
    /// The encryption setting and the tunnel key epochs.
    pub fn encryption(&self) -> &Encryption {
        &self.encryption
    }

    pub(super) fn set_encryption(&mut self, enabled: bool) -> Result<Response, RegistryError> {
        self.config()?;
        self.encryption.enabled = enabled;
        Ok(Response::Ok)
    }

    pub(super) fn begin_tunnel_epoch(&mut self, now: i64) -> Result<Response, RegistryError> {
        self.config()?;
        let enc = &mut self.encryption;
        if !enc.enabled {
            return Err(refuse(
                "encryption is disabled; enable it first with `membrane encrypt enable`",
            ));
        }
        if let Some(p) = enc.pending() {
            return Err(refuse(format!(
                "epoch {p} is still pending; wait until it is activated (`membrane encrypt status`)"
            )));
        }
        let epoch = enc
            .next_epoch()
            .ok_or_else(|| refuse("no epoch number is left"))?;
        enc.epochs.insert(
            epoch,
            TunnelEpoch {
                begun_at: now,
                ..TunnelEpoch::default()
            },
        );
        Ok(Response::TunnelEpoch(epoch))
    }

    pub(super) fn publish_tunnel_key(
        &mut self,
        node_id: u64,
        epoch: u32,
        public: X25519Public,
    ) -> Result<Response, RegistryError> {
        self.node(node_id)
            .ok_or(RegistryError::NodeNotFound { id: node_id })?;
        if public.0 == [0u8; 32] {
            return Err(refuse(format!(
                "node {node_id}'s key for epoch {epoch} is all zeros, not an X25519 public key"
            )));
        }
        let active = self.encryption.active;
        let e = self.encryption.epochs.get_mut(&epoch).ok_or_else(|| {
            refuse(format!(
                "epoch {epoch} does not exist or is retired; publish for a current epoch"
            ))
        })?;
        let has_key = e.keys.contains_key(&node_id);
        match (e.is_activated(), active == Some(epoch)) {
            (false, _) => {}
            (true, true) if !has_key => {}
            (true, true) => {
                return Err(refuse(format!(
                    "node {node_id} already has a key in the active epoch {epoch}; a key is replaced only in a pending epoch"
                )))
            }
            (true, false) => {
                return Err(refuse(format!(
                    "epoch {epoch} has been superseded; publish for the active or the pending epoch"
                )))
            }
        }
        if e.keys.get(&node_id) == Some(&public) {
            return Ok(Response::Ok);
        }
        // A replaced key voids every session installed for the old one, its own included.
        e.keys.insert(node_id, public);
        e.installed.remove(&node_id);
        for peers in e.installed.values_mut() {
            peers.remove(&node_id);
        }
        Ok(Response::Ok)
    }

    pub(super) fn report_tunnel_epoch(
        &mut self,
        node_id: u64,
        epoch: u32,
        peers: BTreeSet<u64>,
    ) -> Result<Response, RegistryError> {
        self.node(node_id)
            .ok_or(RegistryError::NodeNotFound { id: node_id })?;
        let e = self
            .encryption
            .epochs
            .get(&epoch)
            .ok_or_else(|| refuse(format!("epoch {epoch} does not exist or is retired")))?;
        if !e.keys.contains_key(&node_id) {
            return Err(refuse(format!(
                "node {node_id} has no key in epoch {epoch}; publish it first"
            )));
        }
        if peers.contains(&node_id) {
            return Err(refuse(format!(
                "node {node_id} lists itself among the peers it installed"
            )));
        }
        if let Some(p) = peers.iter().find(|p| !e.keys.contains_key(p)) {
            return Err(refuse(format!(
                "node {node_id} reports installing node {p}, which has no key in epoch {epoch}"
            )));
        }
        let e = self
            .encryption
            .epochs
            .get_mut(&epoch)
            .ok_or_else(|| refuse("epoch vanished"))?;
        e.installed.insert(node_id, peers);
        Ok(Response::Ok)
    }

    pub(super) fn activate_tunnel_epoch(
        &mut self,
        epoch: u32,
        now: i64,
    ) -> Result<Response, RegistryError> {
        let enc = &mut self.encryption;
        let e = enc
            .epochs
            .get(&epoch)
            .ok_or_else(|| refuse(format!("epoch {epoch} does not exist or is retired")))?;
        if e.is_activated() {
            return Err(refuse(format!("epoch {epoch} is already activated")));
        }
        if e.keys.is_empty() {
            return Err(refuse(format!(
                "no node has published a key for epoch {epoch}"
            )));
        }
        let waiting = e.waiting_for();
        if !waiting.is_empty() {
            return Err(refuse(format!(
                "nodes {waiting:?} have not installed every peer's key for epoch {epoch}"
            )));
        }
        for (n, old) in enc.epochs.iter_mut() {
            if *n < epoch && old.retire_after.is_none() {
                old.retire_after = Some(now);
            }
        }
        if let Some(e) = enc.epochs.get_mut(&epoch) {
            e.activated_at = Some(now);
        }
        enc.active = Some(epoch);
        Ok(Response::Ok)
    }

    pub(super) fn retire_tunnel_epoch(&mut self, epoch: u32) -> Result<Response, RegistryError> {
        let enc = &mut self.encryption;
        if !enc.epochs.contains_key(&epoch) {
            return Err(refuse(format!(
                "epoch {epoch} does not exist or is retired"
            )));
        }
        match enc.active {
            Some(a) if epoch < a => {}
            _ => {
                return Err(refuse(format!(
                    "epoch {epoch} is not older than the active epoch ({:?}); only superseded epochs are retired",
                    enc.active
                )))
            }
        }
        enc.epochs.remove(&epoch);
        Ok(Response::Ok)
    }

    /// A removed node's keys and reports go from every epoch (called by `remove_node`).
    pub(super) fn forget_tunnel_node(&mut self, id: u64) {
        for e in self.encryption.epochs.values_mut() {
            // Only a key that was in use calls for a new epoch; a pending one was never used.
            if e.keys.remove(&id).is_some() && e.is_activated() {
                e.removed.insert(id);
            }
            e.installed.remove(&id);
            for peers in e.installed.values_mut() {
                peers.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::registry::test_support::*;
    use crate::registry::{Command, Registry, RegistryError, Response, X25519Public};

    fn ok(r: &mut Registry, cmd: Command) -> Response {
        r.apply(cmd).into_result().unwrap()
    }

    fn enc_refused(r: &mut Registry, cmd: Command) {
        refused(r, cmd, |e| matches!(e, RegistryError::Encryption(_)));
    }

    fn key(b: u8) -> X25519Public {
        X25519Public([b; 32])
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn publish(r: &mut Registry, node_id: u64, epoch: u32, b: u8) {
        ok(
            r,
            Command::PublishTunnelKey {
                node_id,
                epoch,
                public: key(b),
            },
        );
    }

    fn report(r: &mut Registry, node_id: u64, epoch: u32, peers: &[u64]) {
        ok(
            r,
            Command::ReportTunnelEpoch {
                node_id,
                epoch,
                peers: set(peers),
            },
        );
    }

    /// A registry with nodes 1 and `n2`, encryption on, epoch 1 begun.
    fn two_nodes() -> (Registry, u64) {
        let mut r = bootstrapped();
        let n2 = signed_node(&mut r, "n2").id;
        ok(&mut r, Command::SetEncryption { enabled: true });
        assert_eq!(
            ok(&mut r, Command::BeginTunnelEpoch { now: 10 }),
            Response::TunnelEpoch(1)
        );
        (r, n2)
    }

    fn activated(r: &mut Registry, n2: u64, epoch: u32) {
        publish(r, 1, epoch, epoch as u8 * 2 + 1);
        publish(r, n2, epoch, epoch as u8 * 2 + 2);
        report(r, 1, epoch, &[n2]);
        report(r, n2, epoch, &[1]);
        ok(r, Command::ActivateTunnelEpoch { epoch, now: 20 });
    }

    #[test]
    fn t100_an_epoch_activates_only_once_everyone_installed_everyone() {
        let (mut r, n2) = two_nodes();
        assert_eq!(r.encryption().pending(), Some(1));
        enc_refused(&mut r, Command::ActivateTunnelEpoch { epoch: 1, now: 11 });
        publish(&mut r, 1, 1, 3);
        publish(&mut r, n2, 1, 4);
        enc_refused(&mut r, Command::ActivateTunnelEpoch { epoch: 1, now: 11 });
        report(&mut r, 1, 1, &[n2]);
        assert_eq!(r.encryption().epochs[&1].waiting_for(), vec![n2]);
        enc_refused(&mut r, Command::ActivateTunnelEpoch { epoch: 1, now: 11 });
        report(&mut r, n2, 1, &[1]);
        ok(&mut r, Command::ActivateTunnelEpoch { epoch: 1, now: 12 });
        let enc = r.encryption();
        assert_eq!(enc.active, Some(1));
        assert_eq!(enc.epochs[&1].activated_at, Some(12));
        assert_eq!(enc.pending(), None);
        // Activated once only.
        enc_refused(&mut r, Command::ActivateTunnelEpoch { epoch: 1, now: 13 });
    }

    #[test]
    fn t101_begin_is_refused_while_disabled_or_pending() {
        let mut r = bootstrapped();
        enc_refused(&mut r, Command::BeginTunnelEpoch { now: 1 });
        ok(&mut r, Command::SetEncryption { enabled: true });
        ok(&mut r, Command::BeginTunnelEpoch { now: 1 });
        enc_refused(&mut r, Command::BeginTunnelEpoch { now: 2 });
        refused(
            &mut Registry::default(),
            Command::SetEncryption { enabled: true },
            |e| matches!(e, RegistryError::NotBootstrapped),
        );
    }

    #[test]
    fn t102_bad_publications_change_nothing() {
        let (mut r, n2) = two_nodes();
        // Unknown node, unknown epoch, zero key.
        refused(
            &mut r,
            Command::PublishTunnelKey {
                node_id: 99,
                epoch: 1,
                public: key(1),
            },
            |e| matches!(e, RegistryError::NodeNotFound { .. }),
        );
        for (epoch, public) in [(2, key(1)), (1, key(0))] {
            enc_refused(
                &mut r,
                Command::PublishTunnelKey {
                    node_id: 1,
                    epoch,
                    public,
                },
            );
        }
        activated(&mut r, n2, 1);
        // No replacing a key in the active epoch.
        enc_refused(
            &mut r,
            Command::PublishTunnelKey {
                node_id: 1,
                epoch: 1,
                public: key(9),
            },
        );
        ok(&mut r, Command::BeginTunnelEpoch { now: 30 });
        activated(&mut r, n2, 2);
        // Nor publishing into a superseded one.
        enc_refused(
            &mut r,
            Command::PublishTunnelKey {
                node_id: 1,
                epoch: 1,
                public: key(9),
            },
        );
    }

    #[test]
    fn t103_bad_reports_change_nothing() {
        let (mut r, n2) = two_nodes();
        // No key of its own yet.
        enc_refused(
            &mut r,
            Command::ReportTunnelEpoch {
                node_id: 1,
                epoch: 1,
                peers: set(&[]),
            },
        );
        publish(&mut r, 1, 1, 3);
        for (epoch, peers) in [(1, set(&[n2])), (1, set(&[1])), (5, set(&[]))] {
            enc_refused(
                &mut r,
                Command::ReportTunnelEpoch {
                    node_id: 1,
                    epoch,
                    peers,
                },
            );
        }
        refused(
            &mut r,
            Command::ReportTunnelEpoch {
                node_id: 42,
                epoch: 1,
                peers: set(&[]),
            },
            |e| matches!(e, RegistryError::NodeNotFound { .. }),
        );
    }

    #[test]
    fn t104_a_replaced_key_voids_the_reports_that_installed_the_old_one() {
        // cilium #25492: a node that rebooted during a rotation publishes a new key; the
        // epoch must not activate on reports made for its old key.
        let (mut r, n2) = two_nodes();
        publish(&mut r, 1, 1, 3);
        publish(&mut r, n2, 1, 4);
        report(&mut r, 1, 1, &[n2]);
        report(&mut r, n2, 1, &[1]);
        publish(&mut r, n2, 1, 5);
        let e = &r.encryption().epochs[&1];
        assert_eq!(e.keys[&n2], key(5));
        assert_eq!(e.waiting_for(), vec![1, n2]);
        enc_refused(&mut r, Command::ActivateTunnelEpoch { epoch: 1, now: 11 });
        // The same key again is a no-op and voids nothing.
        report(&mut r, 1, 1, &[n2]);
        report(&mut r, n2, 1, &[1]);
        publish(&mut r, n2, 1, 5);
        ok(&mut r, Command::ActivateTunnelEpoch { epoch: 1, now: 11 });
    }

    #[test]
    fn t105_a_node_down_during_rotation_publishes_late_into_the_active_epoch() {
        let (mut r, n2) = two_nodes();
        let n3 = signed_node(&mut r, "n3").id;
        // n3 is down: the leader activates with the two live nodes.
        activated(&mut r, n2, 1);
        publish(&mut r, n3, 1, 7);
        // Once, not twice.
        enc_refused(
            &mut r,
            Command::PublishTunnelKey {
                node_id: n3,
                epoch: 1,
                public: key(8),
            },
        );
        report(&mut r, n3, 1, &[1, n2]);
        report(&mut r, 1, 1, &[n2, n3]);
        assert_eq!(r.encryption().epochs[&1].waiting_for(), vec![n2]);
    }

    #[test]
    fn t106_retire_only_superseded_epochs() {
        let (mut r, n2) = two_nodes();
        enc_refused(&mut r, Command::RetireTunnelEpoch { epoch: 1 });
        activated(&mut r, n2, 1);
        enc_refused(&mut r, Command::RetireTunnelEpoch { epoch: 1 });
        ok(&mut r, Command::BeginTunnelEpoch { now: 30 });
        enc_refused(&mut r, Command::RetireTunnelEpoch { epoch: 2 });
        publish(&mut r, 1, 2, 5);
        publish(&mut r, n2, 2, 6);
        report(&mut r, 1, 2, &[n2]);
        report(&mut r, n2, 2, &[1]);
        ok(&mut r, Command::ActivateTunnelEpoch { epoch: 2, now: 40 });
        assert_eq!(r.encryption().epochs[&1].retire_after, Some(40));
        assert_eq!(r.encryption().epochs[&2].retire_after, None);
        enc_refused(&mut r, Command::RetireTunnelEpoch { epoch: 2 });
        ok(&mut r, Command::RetireTunnelEpoch { epoch: 1 });
        enc_refused(&mut r, Command::RetireTunnelEpoch { epoch: 1 });
        assert_eq!(r.encryption().epochs.keys().collect::<Vec<_>>(), vec![&2]);
        // Numbers are never reused.
        ok(&mut r, Command::BeginTunnelEpoch { now: 50 });
        assert_eq!(r.encryption().pending(), Some(3));
    }

    #[test]
    fn t107_removing_a_node_drops_its_keys_and_marks_the_epoch() {
        let (mut r, n2) = two_nodes();
        let n3 = signed_node(&mut r, "n3").id;
        activated(&mut r, n2, 1);
        publish(&mut r, n3, 1, 7);
        report(&mut r, n3, 1, &[1, n2]);
        report(&mut r, 1, 1, &[n2, n3]);
        ok(&mut r, Command::RemoveNode { id: n3 });
        let e = &r.encryption().epochs[&1];
        assert!(!e.keys.contains_key(&n3));
        assert!(!e.installed.contains_key(&n3));
        assert_eq!(e.installed[&1], set(&[n2]));
        assert_eq!(e.removed, set(&[n3]));
    }

    #[test]
    fn t108_disable_keeps_the_epochs() {
        let (mut r, n2) = two_nodes();
        activated(&mut r, n2, 1);
        ok(&mut r, Command::SetEncryption { enabled: false });
        assert!(!r.encryption().enabled);
        assert_eq!(r.encryption().active, Some(1));
    }
}
