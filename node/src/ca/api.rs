//! The CA wing's slice of the local API: `membrane node certs` and a forced renewal.

use std::time::Duration;

use membrane_proto::v1 as pb;
use tonic::Status;
use tracing::info;

use super::run::{renew_now, CaContext};

pub struct CaApi {
    pub ctx: CaContext,
}

/// What `node certs` shows, from this node's registry copy: every current node, with its
/// certificate record or none (certificates issued before the registry recorded them).
pub fn node_certs(r: &membrane_consensus::Registry, now: i64) -> pb::NodeCertsResponse {
    let certs = r
        .nodes()
        .map(|n| match r.certificate(n.id) {
            Some(c) => pb::NodeCert {
                id: n.id,
                name: n.name.clone(),
                known: true,
                serial: c.serial.clone(),
                not_before_unix: c.not_before,
                not_after_unix: c.not_after,
            },
            None => pb::NodeCert {
                id: n.id,
                name: n.name.clone(),
                known: false,
                ..Default::default()
            },
        })
        .collect();
    pb::NodeCertsResponse {
        certs,
        now_unix: now,
    }
}

/// The `sha256:<hex>` of a CA certificate PEM; empty if it does not parse.
fn ca_hash_of_pem(pem: &str) -> String {
    crate::transport::first_cert_der(pem)
        .ok()
        .and_then(|der| membrane_crypto::ca::ca_hash_of_cert_der(&der).ok())
        .unwrap_or_default()
}

/// What `ca status` shows, from this node's registry copy.
pub fn ca_status(r: &membrane_consensus::Registry) -> pb::CaStatusResponse {
    let ca_hash = r
        .cluster()
        .map(|c| ca_hash_of_pem(&c.ca_cert_pem))
        .unwrap_or_default();
    let Some(rot) = r.ca_rotation() else {
        return pb::CaStatusResponse {
            ca_hash,
            ..Default::default()
        };
    };
    let nodes = r
        .nodes()
        .map(|n| pb::CaRotationNode {
            id: n.id,
            name: n.name.clone(),
            done: rot
                .done
                .get(&n.id)
                .map(|p| super::rotation::phase_name(*p).to_string())
                .unwrap_or_default(),
            finished: rot.finished_by(n.id),
        })
        .collect();
    pb::CaStatusResponse {
        ca_hash,
        rotating: true,
        phase: super::rotation::phase_name(rot.phase).to_string(),
        old_ca_hash: ca_hash_of_pem(&rot.old_ca_cert_pem),
        new_ca_hash: ca_hash_of_pem(&rot.new_ca_cert_pem),
        started_at_unix: rot.started_at,
        nodes,
    }
}

impl CaApi {
    pub fn ca_status(&self) -> pb::CaStatusResponse {
        self.ctx.client.local(ca_status)
    }

    /// Starts a CA rotation from this node (a voter); answers once it is committed.
    pub async fn ca_rotate(&self) -> Result<pb::CaStatusResponse, Status> {
        super::rotation::begin(&self.ctx)
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(self.ca_status())
    }

    pub fn node_certs(&self) -> pb::NodeCertsResponse {
        let now = crate::clock::unix_now();
        self.ctx.client.local(|r| node_certs(r, now))
    }

    /// Renews now; answers, then restarts the agent so that it uses the new certificate.
    pub async fn renew(&self) -> Result<pb::NodeCert, Status> {
        let info = renew_now(&self.ctx)
            .await
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        info!(serial = %info.serial_hex, "certificate renewed on request; restarting the agent to use it");
        let restart = self.ctx.restart.clone();
        tokio::spawn(async move {
            // Let the answer reach the CLI first.
            tokio::time::sleep(Duration::from_millis(500)).await;
            restart.request("use the renewed certificate");
        });
        Ok(pb::NodeCert {
            id: self.ctx.me.node_id,
            name: self.ctx.me.node_name.clone(),
            known: true,
            serial: info.serial_hex,
            not_before_unix: info.not_before,
            not_after_unix: info.not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use membrane_consensus::registry::{
        CertRecord, ClusterConfig, GossipKey, NewNode, Sha256, TokenRecord, X25519Public,
    };
    use membrane_consensus::{Command, Registry, Response};

    use super::{ca_status, node_certs};

    fn bootstrapped() -> Registry {
        let mut r = Registry::default();
        let resp = r.apply(Command::Bootstrap {
            config: ClusterConfig {
                cluster_id: 1,
                name: "t".into(),
                pod_pool: "10.128.0.0/16".parse().unwrap(),
                node_prefix_len: 24,
                ca_cert_pem: String::new(),
                legacy_ca_key_pem: String::new(),
                created_at: 0,
            },
            first_node: NewNode {
                name: "n1".into(),
                rpc_addr: "10.77.0.11:7700".parse().unwrap(),
                tls_key_sha256: Sha256([0x22; 32]),
                x25519_public: X25519Public([0x11; 32]),
            },
            first_token: TokenRecord {
                id: "abcdef".into(),
                secret_hash: "a".repeat(64),
                description: String::new(),
                created_at: 0,
                expires_at: 3600,
                max_uses: 1,
                uses: 0,
                revoked: false,
            },
            gossip_key: GossipKey {
                id: 1,
                key_hex: "ab".repeat(32),
            },
        });
        assert!(!matches!(resp, Response::Err(_)), "{resp:?}");
        r
    }

    #[test]
    fn t10_a_node_without_a_record_is_listed_as_unknown_then_with_its_record() {
        let mut r = bootstrapped();
        let listed = node_certs(&r, 100);
        assert_eq!(listed.now_unix, 100);
        assert_eq!(listed.certs.len(), 1);
        assert_eq!(listed.certs[0].name, "n1");
        assert!(!listed.certs[0].known, "bootstrap records no certificate");

        let cert = CertRecord {
            serial: "4a0b".into(),
            not_before: 50,
            not_after: 50 + 30 * 86_400,
            tls_key_sha256: Sha256([0x22; 32]),
        };
        let resp = r.apply(Command::RecordCertificate { node_id: 1, cert });
        assert_eq!(resp, Response::Ok);
        let listed = node_certs(&r, 100);
        let c = &listed.certs[0];
        assert!(c.known);
        assert_eq!(
            (c.serial.as_str(), c.not_after_unix),
            ("4a0b", 50 + 30 * 86_400)
        );
    }

    #[test]
    fn t11_ca_status_shows_the_signing_ca_and_each_nodes_progress() {
        use membrane_consensus::registry::CaRotationPhase::Trusting;
        use membrane_crypto::ca::ClusterCa;
        let mut r = bootstrapped();
        let idle = ca_status(&r);
        assert!(!idle.rotating && idle.nodes.is_empty());
        assert_eq!(idle.ca_hash, "", "an unparsable CA has no hash");
        let new = ClusterCa::generate("t").unwrap();
        let resp = r.apply(Command::BeginCaRotation {
            new_ca_cert_pem: new.cert_pem().to_string(),
            now: 7,
        });
        assert_eq!(resp, Response::Ok);
        let s = ca_status(&r);
        assert!(s.rotating);
        assert_eq!((s.phase.as_str(), s.started_at_unix), ("trusting", 7));
        assert_eq!(s.new_ca_hash, new.hash());
        assert_eq!(s.nodes.len(), 1);
        assert!(!s.nodes[0].finished && s.nodes[0].done.is_empty());
        let resp = r.apply(Command::ReportCaRotation {
            node_id: 1,
            phase: Trusting,
        });
        assert_eq!(resp, Response::Ok);
        let s = ca_status(&r);
        assert!(s.nodes[0].finished);
        assert_eq!(s.nodes[0].done, "trusting");
        r.apply(Command::AdvanceCaRotation { from: Trusting })
            .into_result()
            .unwrap();
        assert_eq!(ca_status(&r).ca_hash, new.hash(), "the new CA signs");
    }
}
