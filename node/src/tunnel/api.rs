//! The tunnel's slice of the local API: `membrane encrypt enable|disable|rotate|status`.
//!
//! Writes go through this node's registry client (forwarded to the leader with this node's
//! certificate: the cluster setting and epochs need a voter). `status` reads this node's
//! registry copy, its tunnel and its device.

use std::sync::Arc;

use membrane_consensus::registry::{Command, Registry, Response};
use membrane_proto::v1 as pb;
use tonic::Status;

use super::control::TunnelShared;
use super::device::DeviceCounters;
use crate::registry::RegistryClient;

pub struct EncryptionApi {
    pub client: Arc<RegistryClient>,
    pub shared: Arc<TunnelShared>,
    pub me: u64,
    pub port: u16,
}

/// The epoch-level part of the status, from a registry copy (pure).
pub fn registry_status(r: &Registry, me: u64) -> pb::EncryptionStatusResponse {
    let enc = r.encryption();
    let epochs = enc
        .epochs
        .iter()
        .map(|(n, e)| pb::EncryptionEpoch {
            epoch: *n,
            state: if !e.is_activated() {
                "pending"
            } else if enc.active == Some(*n) {
                "active"
            } else {
                "superseded"
            }
            .to_string(),
            keys: e.keys.keys().copied().collect(),
            waiting_for: e.waiting_for(),
            begun_at_unix: e.begun_at,
            activated_at_unix: e.activated_at.unwrap_or(0),
        })
        .collect();
    pb::EncryptionStatusResponse {
        enabled: enc.enabled,
        node_id: me,
        active_epoch: enc.active.unwrap_or(0),
        pending_epoch: enc.pending().unwrap_or(0),
        epochs,
        ..Default::default()
    }
}

/// Drop counters in the order the status shows them (every reason, zeros too).
pub fn drops(counters: Option<&DeviceCounters>) -> Vec<pb::EncryptionDrop> {
    super::device::Drop::ALL
        .iter()
        .map(|d| pb::EncryptionDrop {
            reason: d.as_str().to_string(),
            count: counters.map_or(0, |c| c.drop_count(*d)),
        })
        .collect()
}

impl EncryptionApi {
    pub fn status(&self) -> pb::EncryptionStatusResponse {
        let (mut out, view, names) = self.client.local(|r| {
            let names: std::collections::BTreeMap<u64, String> =
                r.nodes().map(|n| (n.id, n.name.clone())).collect();
            (
                registry_status(r, self.me),
                super::view::tunnel_view(r, self.me, self.port),
                names,
            )
        });
        let tunnel = self.shared.tunnel();
        let device = self.shared.device();
        out.device_up = device.is_some();
        out.device = self.shared.device_name();
        out.boot = tunnel.as_ref().map_or(0, |t| t.boot());
        out.peers = view
            .peers
            .values()
            .map(|p| {
                let stats = tunnel
                    .as_ref()
                    .map(|t| t.stats(p.node_id))
                    .unwrap_or_default();
                pb::EncryptionPeer {
                    node_id: p.node_id,
                    name: names.get(&p.node_id).cloned().unwrap_or_default(),
                    underlay: p.underlay.to_string(),
                    send_epoch: tunnel
                        .as_ref()
                        .and_then(|t| t.send_epoch(p.node_id))
                        .unwrap_or(0),
                    accepted_epochs: tunnel
                        .as_ref()
                        .map(|t| t.accepted_epochs(p.node_id))
                        .unwrap_or_default(),
                    sealed_packets: stats.sealed_packets,
                    sealed_bytes: stats.sealed_bytes,
                    opened_packets: stats.opened_packets,
                    opened_bytes: stats.opened_bytes,
                }
            })
            .collect();
        out.drops = drops(device.as_ref().map(|(_, c)| c));
        out
    }

    pub async fn set(&self, enabled: bool) -> Result<pb::EncryptionStatusResponse, Status> {
        self.client
            .write(Command::SetEncryption { enabled })
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(self.status())
    }

    /// Begins a new epoch; the leader's agents carry it through (publish, install, activate).
    /// The answer's `pending_epoch` is the epoch begun.
    pub async fn rotate(&self) -> Result<pb::EncryptionStatusResponse, Status> {
        let resp = self
            .client
            .write(Command::BeginTunnelEpoch {
                now: crate::clock::unix_now(),
            })
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let mut out = self.status();
        if let Response::TunnelEpoch(n) = resp {
            out.pending_epoch = n;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::test_support::*;

    #[test]
    fn status_names_each_epoch_state() {
        let (mut r, ids) = three_nodes();
        activate_with(&mut r, 1, &ids);
        apply(&mut r, Command::BeginTunnelEpoch { now: 200 });
        publish(&mut r, 1, 2);
        publish(&mut r, 2, 2);
        let s = registry_status(&r, 1);
        assert!(s.enabled);
        assert_eq!((s.active_epoch, s.pending_epoch), (1, 2));
        let states: Vec<(u32, &str)> = s
            .epochs
            .iter()
            .map(|e| (e.epoch, e.state.as_str()))
            .collect();
        assert_eq!(states, vec![(1, "active"), (2, "pending")]);
        assert_eq!(s.epochs[1].keys, vec![1, 2]);
        assert_eq!(s.epochs[1].waiting_for, vec![1, 2]);
        let names: Vec<String> = drops(None).into_iter().map(|d| d.reason).collect();
        for want in ["auth", "replay", "stale-epoch", "unknown-sender", "no-key"] {
            assert!(names.iter().any(|n| n == want), "{want}");
        }
    }
}
