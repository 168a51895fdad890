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

impl CaApi {
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
