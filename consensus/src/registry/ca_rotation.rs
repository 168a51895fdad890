//! Replacing the cluster CA (`membrane ca rotate`) without losing quorum.
//!
//! A rotation goes through three phases, each finished by every current node in turn:
//!
//! 1. `Trusting`: every node trusts the old and the new CA (its `tls/ca.crt` holds both,
//!    the old first, which still signs).
//! 2. `Signing`: the new CA signs ([`ClusterConfig::ca_cert_pem`] is now the new one);
//!    every node trusts new+old and renews its certificate to one from the new CA.
//! 3. `Retiring`: every node trusts the new CA only; a certificate from the old one is
//!    refused everywhere. `FinishCaRotation` then clears the rotation.
//!
//! A node reports each phase it has finished (`ReportCaRotation`); the phase advances only
//! once every current node has. A command out of order (a stale report, a repeated advance
//! after a leader change) is refused and changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Registry, RegistryError, Response};

/// Where a CA rotation is; ordered as the phases follow each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CaRotationPhase {
    /// Nodes trust old and new; the old CA signs.
    Trusting,
    /// Nodes trust new and old; the new CA signs; nodes renew.
    Signing,
    /// Nodes trust the new CA only.
    Retiring,
}

/// A CA rotation under way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    /// The CA being replaced.
    pub old_ca_cert_pem: String,
    /// The CA replacing it.
    pub new_ca_cert_pem: String,
    pub phase: CaRotationPhase,
    /// When `membrane ca rotate` began it (the leader's clock).
    pub started_at: i64,
    /// Node id -> the last phase that node has finished.
    pub done: BTreeMap<u64, CaRotationPhase>,
}

impl CaRotation {
    /// The CA certificates a node trusts in this phase, the signing one first.
    pub fn trusted(&self) -> Vec<&str> {
        match self.phase {
            CaRotationPhase::Trusting => vec![&self.old_ca_cert_pem, &self.new_ca_cert_pem],
            CaRotationPhase::Signing => vec![&self.new_ca_cert_pem, &self.old_ca_cert_pem],
            CaRotationPhase::Retiring => vec![&self.new_ca_cert_pem],
        }
    }

    /// Whether node `id` has finished the current phase.
    pub fn finished_by(&self, id: u64) -> bool {
        self.done.get(&id).is_some_and(|p| *p >= self.phase)
    }
}

fn refuse(msg: impl Into<String>) -> RegistryError {
    RegistryError::CaRotation(msg.into())
}

/// A PEM that holds one certificate (the agent checks more; this keeps garbage out).
fn looks_like_one_cert(pem: &str) -> bool {
    pem.matches("-----BEGIN CERTIFICATE-----").count() == 1
        && pem.matches("-----END CERTIFICATE-----").count() == 1
}

impl Registry {
    /// The rotation under way, if any.
    pub fn ca_rotation(&self) -> Option<&CaRotation> {
        self.ca_rotation.as_ref()
    }

    /// The CA certificates every node must trust now, the signing one first: the current CA
    /// alone outside a rotation.
    pub fn trusted_ca_pems(&self) -> Vec<&str> {
        match (&self.ca_rotation, &self.cluster) {
            (Some(r), _) => r.trusted(),
            (None, Some(c)) => vec![c.ca_cert_pem.as_str()],
            (None, None) => vec![],
        }
    }

    /// Current nodes that have not finished the rotation's current phase, in id order.
    pub fn ca_rotation_waiting_for(&self) -> Vec<u64> {
        match &self.ca_rotation {
            Some(r) => self
                .nodes
                .keys()
                .copied()
                .filter(|id| !r.finished_by(*id))
                .collect(),
            None => vec![],
        }
    }

    pub(super) fn begin_ca_rotation(
        &mut self,
        new_ca_cert_pem: String,
        now: i64,
    ) -> Result<Response, RegistryError> {
        let config = self.config()?;
        if let Some(r) = &self.ca_rotation {
            return Err(refuse(format!(
                "a rotation is already under way (phase {:?}); wait for it to finish (`membrane ca status`)",
                r.phase
            )));
        }
        if self.legacy_ca_key().is_some() {
            return Err(refuse(
                "the CA key is still in the registry (a cluster created before issue 11); wait until the voters have moved it out, then rotate",
            ));
        }
        if !looks_like_one_cert(&new_ca_cert_pem) {
            return Err(refuse("the new CA is not one PEM certificate"));
        }
        if new_ca_cert_pem == config.ca_cert_pem {
            return Err(refuse("the new CA is the current one"));
        }
        self.ca_rotation = Some(CaRotation {
            old_ca_cert_pem: config.ca_cert_pem.clone(),
            new_ca_cert_pem,
            phase: CaRotationPhase::Trusting,
            started_at: now,
            done: BTreeMap::new(),
        });
        Ok(Response::Ok)
    }

    pub(super) fn report_ca_rotation(
        &mut self,
        node_id: u64,
        phase: CaRotationPhase,
    ) -> Result<Response, RegistryError> {
        self.node(node_id)
            .ok_or(RegistryError::NodeNotFound { id: node_id })?;
        let r = self
            .ca_rotation
            .as_mut()
            .ok_or_else(|| refuse("no CA rotation is under way"))?;
        if phase != r.phase {
            return Err(refuse(format!(
                "node {node_id} reports phase {phase:?}, but the rotation is in phase {:?}",
                r.phase
            )));
        }
        r.done.insert(node_id, phase);
        Ok(Response::Ok)
    }

    /// Moves from phase `from` to the next, once every current node has finished `from`.
    pub(super) fn advance_ca_rotation(
        &mut self,
        from: CaRotationPhase,
    ) -> Result<Response, RegistryError> {
        let waiting = self.ca_rotation_waiting_for();
        let r = self
            .ca_rotation
            .as_mut()
            .ok_or_else(|| refuse("no CA rotation is under way"))?;
        if r.phase != from {
            return Err(refuse(format!(
                "the rotation is in phase {:?}, not {from:?}",
                r.phase
            )));
        }
        if !waiting.is_empty() {
            return Err(refuse(format!(
                "nodes {waiting:?} have not finished phase {from:?} yet"
            )));
        }
        let next = match from {
            CaRotationPhase::Trusting => CaRotationPhase::Signing,
            CaRotationPhase::Signing => CaRotationPhase::Retiring,
            CaRotationPhase::Retiring => {
                return Err(refuse(
                    "phase Retiring is the last; finish the rotation instead",
                ))
            }
        };
        r.phase = next;
        if next == CaRotationPhase::Signing {
            let new = r.new_ca_cert_pem.clone();
            self.cluster
                .as_mut()
                .ok_or(RegistryError::NotBootstrapped)?
                .ca_cert_pem = new;
        }
        Ok(Response::Ok)
    }

    /// Ends the rotation once every node trusts the new CA only.
    pub(super) fn finish_ca_rotation(&mut self) -> Result<Response, RegistryError> {
        let waiting = self.ca_rotation_waiting_for();
        let r = self
            .ca_rotation
            .as_ref()
            .ok_or_else(|| refuse("no CA rotation is under way"))?;
        if r.phase != CaRotationPhase::Retiring || !waiting.is_empty() {
            return Err(refuse(format!(
                "the rotation is in phase {:?}, waiting for nodes {waiting:?}; it finishes after every node has retired the old CA",
                r.phase
            )));
        }
        self.ca_rotation = None;
        Ok(Response::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::CaRotationPhase::*;
    use crate::registry::test_support::*;
    use crate::registry::{Command, Registry, RegistryError};

    const NEW: &str = "-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n";

    fn migrated() -> Registry {
        let mut r = bootstrapped();
        r.apply(Command::ForgetLegacyCaKey).into_result().unwrap();
        r
    }

    fn rotation_refused(r: &mut Registry, cmd: Command) {
        refused(r, cmd, |e| matches!(e, RegistryError::CaRotation(_)));
    }

    fn ok(r: &mut Registry, cmd: Command) {
        r.apply(cmd).into_result().unwrap();
    }

    fn report_all(r: &mut Registry, phase: super::CaRotationPhase) {
        for id in r.nodes().map(|n| n.id).collect::<Vec<_>>() {
            ok(r, Command::ReportCaRotation { node_id: id, phase });
        }
    }

    #[test]
    fn t90_a_rotation_goes_through_its_phases_in_order() {
        let mut r = migrated();
        let n2 = signed_node(&mut r, "n2");
        assert_eq!(r.trusted_ca_pems(), vec!["ca"]);
        ok(
            &mut r,
            Command::BeginCaRotation {
                new_ca_cert_pem: NEW.into(),
                now: 5,
            },
        );
        assert_eq!(r.trusted_ca_pems(), vec!["ca", NEW]);
        assert_eq!(r.ca_rotation().unwrap().started_at, 5);
        assert_eq!(r.ca_rotation_waiting_for(), vec![1, n2.id]);
        // Not everyone trusts both yet: the new CA may not sign.
        rotation_refused(&mut r, Command::AdvanceCaRotation { from: Trusting });
        ok(
            &mut r,
            Command::ReportCaRotation {
                node_id: 1,
                phase: Trusting,
            },
        );
        assert_eq!(r.ca_rotation_waiting_for(), vec![n2.id]);
        rotation_refused(&mut r, Command::AdvanceCaRotation { from: Trusting });
        report_all(&mut r, Trusting);
        ok(&mut r, Command::AdvanceCaRotation { from: Trusting });
        assert_eq!(r.cluster().unwrap().ca_cert_pem, NEW, "the new CA signs");
        assert_eq!(r.trusted_ca_pems(), vec![NEW, "ca"]);
        // A repeated advance (a new leader proposing again) changes nothing.
        rotation_refused(&mut r, Command::AdvanceCaRotation { from: Trusting });
        // A stale report of the previous phase does not count for this one.
        rotation_refused(
            &mut r,
            Command::ReportCaRotation {
                node_id: 1,
                phase: Trusting,
            },
        );
        rotation_refused(&mut r, Command::AdvanceCaRotation { from: Signing });
        rotation_refused(&mut r, Command::FinishCaRotation);
        report_all(&mut r, Signing);
        ok(&mut r, Command::AdvanceCaRotation { from: Signing });
        assert_eq!(r.trusted_ca_pems(), vec![NEW]);
        rotation_refused(&mut r, Command::FinishCaRotation);
        rotation_refused(&mut r, Command::AdvanceCaRotation { from: Retiring });
        report_all(&mut r, Retiring);
        ok(&mut r, Command::FinishCaRotation);
        assert!(r.ca_rotation().is_none());
        assert_eq!(r.trusted_ca_pems(), vec![NEW]);
        rotation_refused(&mut r, Command::FinishCaRotation);
        rotation_refused(
            &mut r,
            Command::ReportCaRotation {
                node_id: 1,
                phase: Retiring,
            },
        );
    }

    #[test]
    fn t91_begin_is_refused_when_it_cannot_start() {
        let mut legacy = bootstrapped();
        rotation_refused(
            &mut legacy,
            Command::BeginCaRotation {
                new_ca_cert_pem: NEW.into(),
                now: 1,
            },
        );
        let mut r = migrated();
        for bad in ["", "ca", "garbage", &format!("{NEW}{NEW}")] {
            rotation_refused(
                &mut r,
                Command::BeginCaRotation {
                    new_ca_cert_pem: bad.to_string(),
                    now: 1,
                },
            );
        }
        ok(
            &mut r,
            Command::BeginCaRotation {
                new_ca_cert_pem: NEW.into(),
                now: 1,
            },
        );
        rotation_refused(
            &mut r,
            Command::BeginCaRotation {
                new_ca_cert_pem: NEW.replace("new", "other"),
                now: 2,
            },
        );
        assert_eq!(r.ca_rotation().unwrap().new_ca_cert_pem, NEW);
    }

    #[test]
    fn t92_a_removed_node_is_not_waited_for_and_cannot_report() {
        let mut r = migrated();
        let n2 = signed_node(&mut r, "n2");
        ok(
            &mut r,
            Command::BeginCaRotation {
                new_ca_cert_pem: NEW.into(),
                now: 1,
            },
        );
        ok(
            &mut r,
            Command::ReportCaRotation {
                node_id: 1,
                phase: Trusting,
            },
        );
        ok(&mut r, Command::RemoveNode { id: n2.id });
        refused(
            &mut r,
            Command::ReportCaRotation {
                node_id: n2.id,
                phase: Trusting,
            },
            |e| matches!(e, RegistryError::NodeNotFound { .. }),
        );
        ok(&mut r, Command::AdvanceCaRotation { from: Trusting });
    }
}
