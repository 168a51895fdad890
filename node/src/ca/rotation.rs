//! The CA rotation loop: looks at the registry's rotation every few seconds, and does what
//! `rotation_plan` says (fetch the new key, rewrite `tls/ca.crt`, renew, restart in place,
//! report; on the leader, advance). Also the start of a rotation, for `membrane ca rotate`.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use membrane_consensus::registry::CaRotationPhase;
use membrane_consensus::Command;
use membrane_crypto::ca::{cert_signed_by, ClusterCa};
use membrane_proto::v1::CaKeyRequest;
use tracing::{debug, info, warn};

use super::bundle;
use super::rotation_plan::{self, RotationAction, RotationView};
use super::run::{ca_client, other_voters, renew_now, CaContext};
use crate::transport::first_cert_der;

/// How often the loop looks at the rotation.
const ROTATION_PERIOD: Duration = Duration::from_secs(2);

/// Runs until the agent stops.
pub async fn run(ctx: CaContext) {
    loop {
        tokio::time::sleep(ROTATION_PERIOD).await;
        let view = match look(&ctx).await {
            Ok(v) => v,
            Err(e) => {
                debug!(error = %format!("{e:#}"), "cannot look at the CA rotation");
                continue;
            }
        };
        for action in rotation_plan::plan(&view) {
            let label = format!("{action:?}");
            let label = label.split('(').next().unwrap_or_default().to_string();
            match act(&ctx, &view, action).await {
                Ok(Step::Continue) => {}
                Ok(Step::Stop) => return,
                Err(e) => {
                    warn!(step = %label, error = %format!("{e:#}"), "CA rotation step failed; retrying");
                    break;
                }
            }
        }
    }
}

enum Step {
    Continue,
    /// A restart was asked for: this process does nothing more.
    Stop,
}

async fn look(ctx: &CaContext) -> anyhow::Result<RotationView> {
    let client = &ctx.client;
    let metrics = client.raft().metrics().borrow().clone();
    let committed = client
        .raft()
        .with_raft_state(|st| st.committed.map(|l| l.index))
        .await
        .ok()
        .flatten();
    let caught_up = committed.is_some() && client.applied_index() >= committed;
    let (voters, _) = client.membership();
    let (rotation, node_ids, waiting_for) = client.local(|r| {
        (
            r.ca_rotation().cloned(),
            r.nodes().map(|n| n.id).collect::<Vec<_>>(),
            r.ca_rotation_waiting_for(),
        )
    });
    let mut turn_order = node_ids;
    turn_order.sort_by_key(|id| (!voters.contains(id), *id));
    let (disk_bundle, disk_cert) = ctx.state.certificates()?;
    let from_new = |cert_pem: &str| -> bool {
        let Some(r) = &rotation else { return false };
        match (first_cert_der(cert_pem), first_cert_der(&r.new_ca_cert_pem)) {
            (Ok(c), Ok(ca)) => cert_signed_by(&c, &ca),
            _ => false,
        }
    };
    Ok(RotationView {
        me: ctx.me.node_id,
        voter: voters.contains(&ctx.me.node_id),
        leader: metrics.current_leader == Some(ctx.me.node_id),
        caught_up,
        turn_order,
        waiting_for,
        disk_cert_new: from_new(&disk_cert),
        used_cert_new: from_new(&ctx.tls.cert_pem),
        disk_bundle,
        used_bundle: ctx.tls.ca_pem.clone(),
        has_next_key: ctx.state.next_ca_key_path().exists(),
        rotation,
    })
}

async fn act(ctx: &CaContext, view: &RotationView, action: RotationAction) -> anyhow::Result<Step> {
    let new_pem = view
        .rotation
        .as_ref()
        .map(|r| r.new_ca_cert_pem.clone())
        .unwrap_or_default();
    match action {
        RotationAction::FetchNextKey => fetch_next_key(ctx, &new_pem).await?,
        RotationAction::DeleteNextKey => {
            if ctx.custody.delete_next()? {
                info!("the new CA's key is not needed on this node: deleted");
            }
        }
        RotationAction::WriteTrust(pem) => {
            ctx.state.write_ca_certs(&pem)?;
            info!(
                cas = bundle::split(&pem).len(),
                "CA rotation: tls/ca.crt rewritten"
            );
        }
        RotationAction::PromoteNextKey => ctx.custody.promote_next()?,
        RotationAction::Renew => {
            let info = renew_now(ctx).await?;
            info!(serial = %info.serial_hex, "CA rotation: certificate renewed from the new CA");
        }
        RotationAction::Restart => {
            info!("CA rotation: restarting the agent to use the new trust");
            ctx.restart.request("use the rotated cluster CA");
            return Ok(Step::Stop);
        }
        RotationAction::Report(phase) => {
            ctx.client
                .write(Command::ReportCaRotation {
                    node_id: ctx.me.node_id,
                    phase,
                })
                .await?;
            info!(?phase, "CA rotation: this node finished the phase");
        }
        RotationAction::Advance(from) => {
            ctx.client
                .write(Command::AdvanceCaRotation { from })
                .await?;
            info!(
                ?from,
                "CA rotation: every node finished the phase; advanced"
            );
        }
        RotationAction::Finish => {
            ctx.client.write(Command::FinishCaRotation).await?;
            info!("CA rotation finished: the old CA is retired");
        }
    }
    Ok(Step::Continue)
}

async fn fetch_next_key(ctx: &CaContext, new_pem: &str) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for (id, addr) in other_voters(ctx) {
        let got = async {
            let resp = ca_client(ctx, id, &addr)?
                .fetch_key(CaKeyRequest { next: true })
                .await
                .map_err(|s| anyhow!("{}", s.message()))?
                .into_inner();
            ctx.custody.store_next(new_pem, &resp.ca_key_pem)?;
            anyhow::Ok(())
        }
        .await;
        match got {
            Ok(()) => {
                info!(from = id, "CA rotation: the new CA's key received");
                return Ok(());
            }
            Err(e) => errors.push(format!("node {id}: {e:#}")),
        }
    }
    bail!(
        "no voter handed over the new CA's key: {}",
        errors.join("; ")
    )
}

/// Starts a rotation from this node (a voter): a new CA whose key is kept here until the
/// other voters fetch it, then `BeginCaRotation` through the leader. Returns the new CA.
pub async fn begin(ctx: &CaContext) -> anyhow::Result<ClusterCa> {
    let (voters, _) = ctx.client.membership();
    if !voters.contains(&ctx.me.node_id) {
        bail!("this node is not a voter; run `membrane ca rotate` on a voter (`membrane node list` shows them): only voters may hold a CA key");
    }
    let (name, rotating) = ctx.client.local(|r| {
        (
            r.cluster().map(|c| c.name.clone()),
            r.ca_rotation().map(|r| r.phase),
        )
    });
    let name = name.ok_or_else(|| anyhow!("the cluster is not initialised"))?;
    if let Some(phase) = rotating {
        bail!("a CA rotation is already under way (phase {phase:?}); `membrane ca status` shows its progress");
    }
    let ca = ClusterCa::generate(&name).context("generating the new CA")?;
    ctx.custody.store_next(ca.cert_pem(), ca.key_pem())?;
    ctx.client
        .write(Command::BeginCaRotation {
            new_ca_cert_pem: ca.cert_pem().to_string(),
            now: crate::clock::unix_now(),
        })
        .await?;
    info!(new_ca = %ca.hash(), "CA rotation begun");
    Ok(ca)
}

/// The phase as `membrane ca status` names it.
pub fn phase_name(p: CaRotationPhase) -> &'static str {
    match p {
        CaRotationPhase::Trusting => "trusting",
        CaRotationPhase::Signing => "signing",
        CaRotationPhase::Retiring => "retiring",
    }
}
