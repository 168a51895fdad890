//! `membrane encrypt enable|disable|rotate|status`.

use std::time::{Duration, Instant};

use membrane_proto::v1 as pb;
use serde_json::{json, Value};

use super::args::EncryptCmd;
use super::client::{status_err, Client};
use super::output::{table, time, Output};

pub(super) async fn run(c: &mut Client, cmd: EncryptCmd, out: &Output) -> anyhow::Result<()> {
    let status = match cmd {
        EncryptCmd::Status => c
            .encryption_status(pb::Empty {})
            .await
            .map_err(status_err)?,
        EncryptCmd::Disable => c
            .encryption_set(pb::EncryptionSetRequest { enabled: false })
            .await
            .map_err(status_err)?,
        EncryptCmd::Enable { no_wait, timeout } => {
            let s = c
                .encryption_set(pb::EncryptionSetRequest { enabled: true })
                .await
                .map_err(status_err)?
                .into_inner();
            let s = if no_wait {
                s
            } else {
                // Encryption is on once an epoch is active and this node's device runs.
                wait(c, timeout, |s| s.active_epoch != 0 && s.device_up).await?
            };
            out.encryption_status(&s);
            return Ok(());
        }
        EncryptCmd::Rotate { no_wait, timeout } => {
            let s = c
                .encryption_rotate(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner();
            let begun = s.pending_epoch;
            let s = if no_wait {
                s
            } else {
                wait(c, timeout, |s| s.active_epoch >= begun).await?
            };
            out.encryption_status(&s);
            return Ok(());
        }
    };
    out.encryption_status(&status.into_inner());
    Ok(())
}

async fn wait(
    c: &mut Client,
    timeout: u64,
    done: impl Fn(&pb::EncryptionStatusResponse) -> bool,
) -> anyhow::Result<pb::EncryptionStatusResponse> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let s = c
            .encryption_status(pb::Empty {})
            .await
            .map_err(status_err)?
            .into_inner();
        if done(&s) {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            let waiting: Vec<u64> = s
                .epochs
                .iter()
                .filter(|e| e.state == "pending")
                .flat_map(|e| e.waiting_for.iter().copied())
                .collect();
            anyhow::bail!(
                "not done after {timeout} s (active epoch {}, pending {}, waiting for nodes {waiting:?}; a node that is up but has not published blocks activation); see `membrane encrypt status`",
                s.active_epoch,
                s.pending_epoch
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn epoch_or_none(e: u32) -> String {
    if e == 0 {
        "-".into()
    } else {
        e.to_string()
    }
}

pub(super) fn status_json(r: &pb::EncryptionStatusResponse) -> Value {
    let epochs: Vec<Value> = r
        .epochs
        .iter()
        .map(|e| {
            json!({"epoch": e.epoch, "state": e.state, "keys": e.keys,
                   "waiting_for": e.waiting_for, "begun_at": time(e.begun_at_unix),
                   "activated_at": (e.activated_at_unix != 0).then(|| time(e.activated_at_unix))})
        })
        .collect();
    let peers: Vec<Value> = r
        .peers
        .iter()
        .map(|p| {
            json!({"node_id": p.node_id, "name": p.name, "underlay": p.underlay,
                   "send_epoch": (p.send_epoch != 0).then_some(p.send_epoch),
                   "accepted_epochs": p.accepted_epochs,
                   "sealed_packets": p.sealed_packets, "sealed_bytes": p.sealed_bytes,
                   "opened_packets": p.opened_packets, "opened_bytes": p.opened_bytes})
        })
        .collect();
    let drops: serde_json::Map<String, Value> = r
        .drops
        .iter()
        .map(|d| (d.reason.clone(), json!(d.count)))
        .collect();
    json!({"enabled": r.enabled, "node_id": r.node_id, "device": r.device,
           "device_up": r.device_up, "boot": r.boot,
           "active_epoch": (r.active_epoch != 0).then_some(r.active_epoch),
           "pending_epoch": (r.pending_epoch != 0).then_some(r.pending_epoch),
           "epochs": epochs, "peers": peers, "drops": drops})
}

pub(super) fn status_text(r: &pb::EncryptionStatusResponse) -> String {
    let mut o = format!(
        "encryption: {}; device {} {}; active epoch {}, pending {}\n",
        if r.enabled { "enabled" } else { "disabled" },
        r.device,
        if r.device_up { "up" } else { "down" },
        epoch_or_none(r.active_epoch),
        epoch_or_none(r.pending_epoch),
    );
    if !r.epochs.is_empty() {
        let rows = r
            .epochs
            .iter()
            .map(|e| {
                vec![
                    e.epoch.to_string(),
                    e.state.clone(),
                    format!("{:?}", e.keys),
                    format!("{:?}", e.waiting_for),
                ]
            })
            .collect();
        o.push_str(&table(&["EPOCH", "STATE", "KEYS", "WAITING FOR"], rows));
    }
    let rows = r
        .peers
        .iter()
        .map(|p| {
            vec![
                p.node_id.to_string(),
                p.name.clone(),
                p.underlay.clone(),
                epoch_or_none(p.send_epoch),
                format!("{:?}", p.accepted_epochs),
                format!("{}/{}", p.sealed_packets, p.sealed_bytes),
                format!("{}/{}", p.opened_packets, p.opened_bytes),
            ]
        })
        .collect();
    o.push_str(&table(
        &[
            "PEER",
            "NAME",
            "UNDERLAY",
            "SEND EPOCH",
            "ACCEPTED",
            "SEALED PKTS/BYTES",
            "OPENED PKTS/BYTES",
        ],
        rows,
    ));
    let drops: Vec<String> = r
        .drops
        .iter()
        .map(|d| format!("{} {}", d.reason, d.count))
        .collect();
    o.push_str(&format!("drops: {}\n", drops.join(", ")));
    o
}
