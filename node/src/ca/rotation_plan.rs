//! What this node does next in a CA rotation, from what it sees (pure).
//!
//! Nodes take turns within a phase, voters first (so that in `Signing` the first node to
//! renew is a voter that signs with the new CA), then the others, each by id. A node acts
//! only once every node before it has reported the phase finished, and it reports only
//! after restarting with the new trust: so at most one node restarts at a time and quorum
//! is kept. The leader advances the phase once every current node has reported it.

use membrane_consensus::registry::{CaRotation, CaRotationPhase};

use super::bundle;

/// What the rotation loop sees.
#[derive(Clone, Debug)]
pub struct RotationView {
    pub me: u64,
    pub voter: bool,
    pub leader: bool,
    /// The registry copy has applied everything committed (so it is not a replay).
    pub caught_up: bool,
    pub rotation: Option<CaRotation>,
    /// Current nodes in turn order: voters by id, then the others by id.
    pub turn_order: Vec<u64>,
    /// Current nodes that have not finished the current phase.
    pub waiting_for: Vec<u64>,
    /// `tls/ca.crt` on disk, and as loaded at this process's start (in use).
    pub disk_bundle: String,
    pub used_bundle: String,
    /// Whether `tls/node.crt` on disk, and the one in use, is from the rotation's new CA.
    pub disk_cert_new: bool,
    pub used_cert_new: bool,
    /// Whether this node holds the new CA's key (`keys/ca-next.key`).
    pub has_next_key: bool,
}

/// One step, executed in order; a failed step ends the round (retried at the next).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotationAction {
    /// Fetch the new CA's key from a voter that holds it (voters only).
    FetchNextKey,
    /// Delete the new CA's key: this node is not a voter, or it is no longer needed.
    DeleteNextKey,
    /// Write `tls/ca.crt` with these contents.
    WriteTrust(String),
    /// The new CA's key becomes the signing key (voters, phase `Signing`).
    PromoteNextKey,
    /// Renew this node's certificate from the new CA.
    Renew,
    /// Restart in place to use the new trust (and certificate).
    Restart,
    Report(CaRotationPhase),
    /// Leader: every node finished this phase.
    Advance(CaRotationPhase),
    /// Leader: every node retired the old CA.
    Finish,
}

pub fn plan(v: &RotationView) -> Vec<RotationAction> {
    use CaRotationPhase::*;
    use RotationAction::*;
    let mut out = Vec::new();
    if !v.caught_up {
        return out;
    }
    let Some(r) = &v.rotation else {
        if v.has_next_key && !v.voter {
            out.push(DeleteNextKey);
        }
        return out;
    };
    let phase = r.phase;
    let target = r.trusted();
    if v.has_next_key && (!v.voter || phase == Retiring) {
        out.push(DeleteNextKey);
    }
    let disk_trusts = bundle::same(&v.disk_bundle, &target);
    // A voter holds the new key before it trusts the new CA, and before it names it as its
    // signer (once it has, the key is its signing key: `PromoteNextKey`).
    let need_key =
        v.voter && !v.has_next_key && (phase == Trusting || (phase == Signing && !disk_trusts));
    if need_key {
        out.push(FetchNextKey);
    }
    let done = bundle::same(&v.used_bundle, &target) && (phase != Signing || v.used_cert_new);
    if done {
        if !r.finished_by(v.me) {
            out.push(Report(phase));
        }
    } else if my_turn(v, r) && !need_key {
        if !disk_trusts {
            out.push(WriteTrust(bundle::join(&target)));
        }
        if v.voter && phase == Signing {
            out.push(PromoteNextKey);
        }
        if phase == Signing && !v.disk_cert_new {
            out.push(Renew);
        }
        out.push(Restart);
    }
    if v.leader && v.waiting_for.is_empty() {
        out.push(if phase == Retiring {
            Finish
        } else {
            Advance(phase)
        });
    }
    out
}

/// Whether every node before this one in the turn order has finished the phase.
fn my_turn(v: &RotationView, r: &CaRotation) -> bool {
    v.turn_order
        .iter()
        .take_while(|id| **id != v.me)
        .all(|id| r.finished_by(*id))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::RotationAction::*;
    use super::*;
    use membrane_consensus::registry::CaRotationPhase::*;

    const OLD: &str = "-----BEGIN CERTIFICATE-----\nOLD\n-----END CERTIFICATE-----\n";
    const NEW: &str = "-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n";

    fn rotation(phase: CaRotationPhase, done: &[(u64, CaRotationPhase)]) -> CaRotation {
        CaRotation {
            old_ca_cert_pem: OLD.into(),
            new_ca_cert_pem: NEW.into(),
            phase,
            started_at: 0,
            done: done.iter().copied().collect::<BTreeMap<_, _>>(),
        }
    }

    /// Node `me` of voters 1, 2, 3 (1 leads), trusting the old CA only.
    fn view(me: u64, r: CaRotation) -> RotationView {
        let waiting_for = [1, 2, 3]
            .into_iter()
            .filter(|id| !r.finished_by(*id))
            .collect();
        RotationView {
            me,
            voter: true,
            leader: me == 1,
            caught_up: true,
            rotation: Some(r),
            turn_order: vec![1, 2, 3],
            waiting_for,
            disk_bundle: OLD.into(),
            used_bundle: OLD.into(),
            disk_cert_new: false,
            used_cert_new: false,
            has_next_key: true,
        }
    }

    #[test]
    fn t10_trusting_nodes_take_turns_and_report_after_the_restart() {
        let both = bundle::join(&[OLD, NEW]);
        // Node 1 first: writes old+new, restarts.
        let v = view(1, rotation(Trusting, &[]));
        assert_eq!(plan(&v), vec![WriteTrust(both.clone()), Restart]);
        // Node 2 waits for node 1, but fetches the key meanwhile.
        let mut v2 = view(2, rotation(Trusting, &[]));
        v2.has_next_key = false;
        assert_eq!(plan(&v2), vec![FetchNextKey]);
        // Node 1 back with both in use: reports.
        let mut v = view(1, rotation(Trusting, &[]));
        v.disk_bundle = both.clone();
        v.used_bundle = both.clone();
        assert_eq!(plan(&v), vec![Report(Trusting)]);
        // Then node 2's turn; a crash after the write does not write again.
        let mut v2 = view(2, rotation(Trusting, &[(1, Trusting)]));
        assert_eq!(plan(&v2), vec![WriteTrust(both.clone()), Restart]);
        v2.disk_bundle = both.clone();
        assert_eq!(plan(&v2), vec![Restart]);
        // A voter without the new key waits for it before its turn.
        v2.has_next_key = false;
        assert_eq!(plan(&v2), vec![FetchNextKey]);
        // Everyone done: the leader advances.
        let mut v = view(
            1,
            rotation(Trusting, &[(1, Trusting), (2, Trusting), (3, Trusting)]),
        );
        v.used_bundle = both.clone();
        v.disk_bundle = both;
        assert_eq!(plan(&v), vec![Advance(Trusting)]);
    }

    #[test]
    fn t11_signing_promotes_the_key_renews_and_is_done_only_with_a_new_cert() {
        let both = bundle::join(&[OLD, NEW]);
        let new_first = bundle::join(&[NEW, OLD]);
        let mut v = view(1, rotation(Signing, &[]));
        v.disk_bundle = both.clone();
        v.used_bundle = both;
        assert_eq!(
            plan(&v),
            vec![
                WriteTrust(new_first.clone()),
                PromoteNextKey,
                Renew,
                Restart
            ]
        );
        // Renewed, restarted, but the certificate in use is what counts.
        v.disk_bundle = new_first.clone();
        v.used_bundle = new_first.clone();
        v.has_next_key = false;
        v.disk_cert_new = true;
        assert_eq!(plan(&v), vec![PromoteNextKey, Restart]);
        v.used_cert_new = true;
        assert_eq!(plan(&v), vec![Report(Signing)]);
        // A voter that never got the new key does not name the new CA its signer.
        let mut v3 = view(3, rotation(Signing, &[(1, Signing), (2, Signing)]));
        v3.has_next_key = false;
        assert_eq!(plan(&v3), vec![FetchNextKey]);
        // A learner renews without any key.
        let mut l = view(
            4,
            rotation(Signing, &[(1, Signing), (2, Signing), (3, Signing)]),
        );
        l.voter = false;
        l.has_next_key = false;
        l.turn_order.push(4);
        assert_eq!(plan(&l), vec![WriteTrust(new_first), Renew, Restart]);
    }

    #[test]
    fn t12_retiring_drops_the_old_ca_and_the_leader_finishes() {
        let new_only = bundle::join(&[NEW]);
        let mut v = view(2, rotation(Retiring, &[(1, Retiring)]));
        v.used_cert_new = true;
        v.has_next_key = true; // a leftover: not needed any more
        assert_eq!(
            plan(&v),
            vec![DeleteNextKey, WriteTrust(new_only.clone()), Restart]
        );
        let mut v = view(
            1,
            rotation(Retiring, &[(1, Retiring), (2, Retiring), (3, Retiring)]),
        );
        v.used_bundle = new_only.clone();
        v.disk_bundle = new_only;
        v.has_next_key = false;
        assert_eq!(plan(&v), vec![Finish]);
    }

    #[test]
    fn t13_nothing_before_catching_up_and_learners_never_keep_the_key() {
        let mut v = view(2, rotation(Trusting, &[]));
        v.caught_up = false;
        assert_eq!(plan(&v), vec![]);
        let mut l = view(4, rotation(Trusting, &[]));
        l.voter = false;
        assert_eq!(plan(&l)[0], DeleteNextKey);
        assert!(!plan(&l).contains(&FetchNextKey));
        l.rotation = None;
        assert_eq!(plan(&l), vec![DeleteNextKey]);
        let mut idle = view(1, rotation(Trusting, &[]));
        idle.rotation = None;
        assert_eq!(plan(&idle), vec![], "a voter keeps a key it just generated");
    }
}
