//! The CA wing's loops: custody (take, hand over, delete the key; migrate it out of the
//! registry; scrub the storage) and certificate renewal. The decisions are in `plan` and
//! `renewal`; this file does the IO.
//!
//! A renewed certificate takes effect by restarting the agent in place (`exec` of its own
//! binary with the same arguments, after a clean Raft shutdown). Every TLS configuration of
//! the agent (node RPC server, Raft client, forwarded writes, renewal) is built once at start
//! from `tls/node.crt`; re-executing is the one way that reloads all of them together, and
//! it is what the agent already survives by design (the datapath stays up while the agent
//! is away, and the next start takes it back). It happens once per renewal, when a third
//! of the certificate's life is left (10 days with the default 30).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use membrane_crypto::ca::{ca_hash_of_cert_der, node_id_from_cert_der};
use membrane_crypto::cert_info::{cert_info_from_pem, CertInfo};
use membrane_crypto::keys::NodeKeys;
use membrane_proto::v1::cert_authority_client::CertAuthorityClient;
use membrane_proto::v1::{CaKeyRequest, CaKeyStatusRequest, RenewRequest};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::custody::CaCustody;
use super::plan::{self, CustodyAction, CustodyView, LegacyKey, Role, VoterKey};
use super::{renewal, scrub};
use crate::registry::RegistryClient;
use crate::state::{NodeIdentity, StateDir};
use crate::transport::NodeTls;

/// How often custody looks at the membership and the registry.
const CUSTODY_PERIOD: Duration = Duration::from_secs(2);
/// Longest sleep between two looks at the certificate's expiry.
const RENEWAL_MAX_SLEEP_SECS: u64 = 3600;
/// Wait after a failed renewal before the next attempt.
const RENEWAL_RETRY: Duration = Duration::from_secs(60);
/// How long a purge is given to reach the disk before the database is rewritten.
const PURGE_FLUSH_WAIT: Duration = Duration::from_millis(1500);
/// Storage scrubs (snapshot and purge) are at least this far apart.
const SCRUB_PERIOD: Duration = Duration::from_secs(600);

/// Why the agent asks to be restarted.
#[derive(Default)]
pub struct Restart {
    notify: Notify,
    reason: std::sync::Mutex<Option<&'static str>>,
}

impl Restart {
    pub fn request(&self, reason: &'static str) {
        *self.reason.lock().expect("restart reason lock") = Some(reason);
        self.notify.notify_one();
    }

    /// Resolves when a restart is asked for, with the reason.
    pub async fn requested(&self) -> &'static str {
        self.notify.notified().await;
        self.reason
            .lock()
            .expect("restart reason lock")
            .unwrap_or("requested")
    }
}

/// What the CA loops share with the agent.
#[derive(Clone)]
pub struct CaContext {
    pub client: Arc<RegistryClient>,
    pub custody: CaCustody,
    pub state: StateDir,
    pub tls: NodeTls,
    pub me: NodeIdentity,
    pub restart: Arc<Restart>,
    /// The store was rewritten at this start: do not ask for another rewrite in this process.
    pub rewrote_at_start: bool,
}

/// Runs custody until the agent stops.
pub async fn custody(ctx: CaContext) {
    let mut storage_clean = false;
    let mut last_scrub: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(CUSTODY_PERIOD).await;
        let view = look(&ctx, storage_clean).await;
        storage_clean =
            !view.storage_holds_key && view.legacy == LegacyKey::Absent && view.caught_up;
        for action in plan::plan(&view) {
            let result = match action {
                CustodyAction::AdoptLegacyKey => adopt_legacy_key(&ctx),
                CustodyAction::FetchFromVoter => fetch_from_voter(&ctx).await,
                CustodyAction::DeleteKey => ctx
                    .custody
                    .delete()
                    .map(|had| {
                        if had {
                            info!("this node is no longer a voter: CA key deleted")
                        }
                    })
                    .map_err(Into::into),
                CustodyAction::ForgetLegacyKeyWhenVotersHoldIt => forget_legacy_key(&ctx).await,
                CustodyAction::ScrubStorage => {
                    if last_scrub.is_some_and(|t| t.elapsed() < SCRUB_PERIOD) {
                        continue;
                    }
                    last_scrub = Some(tokio::time::Instant::now());
                    scrub_storage(&ctx).await
                }
            };
            if let Err(e) = result {
                warn!(?action, error = %format!("{e:#}"), "CA key custody step failed; retrying");
            }
        }
    }
}

async fn look(ctx: &CaContext, storage_clean: bool) -> CustodyView {
    let client = &ctx.client;
    let metrics = client.raft().metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let legacy = match client.local(|r| r.legacy_ca_key().map(str::to_string)) {
        None => LegacyKey::Absent,
        Some(k) if ctx.custody.is_our_key(&k) => LegacyKey::SameCa,
        Some(_) => LegacyKey::Unusable,
    };
    let committed = client
        .raft()
        .with_raft_state(|st| st.committed.map(|l| l.index))
        .await
        .ok()
        .flatten();
    let caught_up = client.applied_index() >= committed && committed.is_some();
    // A removed node may never hear of the membership without it (the leader stops
    // talking to it); the registry's removal reaches it first. Trusted only once the
    // registry copy has caught up, since a replay passes through states before this
    // node's admission.
    let removed =
        caught_up && client.local(|r| r.cluster().is_some() && r.node(ctx.me.node_id).is_none());
    let role = if membership.nodes().next().is_none() {
        Role::Unknown
    } else if removed || !membership.voter_ids().any(|v| v == ctx.me.node_id) {
        Role::NotVoter
    } else {
        Role::Voter
    };
    let storage_holds_key = !storage_clean
        && legacy == LegacyKey::Absent
        && caught_up
        && scrub::holds_private_key(&ctx.state.raft_dir()).unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the Raft storage to look for a private key");
            false
        });
    CustodyView {
        role,
        has_key: ctx.custody.has_key(),
        legacy,
        leader: metrics.current_leader == Some(ctx.me.node_id),
        caught_up,
        storage_holds_key,
    }
}

fn adopt_legacy_key(ctx: &CaContext) -> anyhow::Result<()> {
    let key = ctx
        .client
        .local(|r| r.legacy_ca_key().map(str::to_string))
        .ok_or_else(|| anyhow!("the registry no longer holds the key"))?;
    ctx.custody.store(&key)?;
    info!("CA key moved from the registry to this voter's state directory");
    Ok(())
}

/// The other voters and their RPC addresses, in id order.
pub(super) fn other_voters(ctx: &CaContext) -> Vec<(u64, String)> {
    let metrics = ctx.client.raft().metrics().borrow().clone();
    let m = metrics.membership_config.membership();
    m.voter_ids()
        .filter(|id| *id != ctx.me.node_id)
        .filter_map(|id| Some((id, m.get_node(&id)?.addr.clone())))
        .collect()
}

pub(super) fn ca_client(
    ctx: &CaContext,
    id: u64,
    addr: &str,
) -> anyhow::Result<CertAuthorityClient<tonic::transport::Channel>> {
    Ok(CertAuthorityClient::new(ctx.tls.channel(addr, id)?))
}

async fn fetch_from_voter(ctx: &CaContext) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for (id, addr) in other_voters(ctx) {
        let got = async {
            let resp = ca_client(ctx, id, &addr)?
                .fetch_key(CaKeyRequest { next: false })
                .await
                .map_err(|s| anyhow!("{}", s.message()))?
                .into_inner();
            ctx.custody.store(&resp.ca_key_pem)?;
            anyhow::Ok(())
        }
        .await;
        match got {
            Ok(()) => {
                info!(from = id, "this node became a voter: CA key received");
                return Ok(());
            }
            Err(e) => errors.push(format!("node {id}: {e:#}")),
        }
    }
    bail!("no voter handed over the CA key: {}", errors.join("; "))
}

async fn forget_legacy_key(ctx: &CaContext) -> anyhow::Result<()> {
    let Some(own) = ctx.custody.ca() else {
        return Ok(()); // adopted on the next round first
    };
    let ca_hash = own.hash();
    let mut answers = BTreeMap::from([(ctx.me.node_id, VoterKey::Holds(ca_hash.clone()))]);
    for (id, addr) in other_voters(ctx) {
        let answer = match ca_client(ctx, id, &addr) {
            Ok(mut c) => match c.key_status(CaKeyStatusRequest {}).await {
                Ok(r) if r.get_ref().has_key => VoterKey::Holds(r.into_inner().ca_hash),
                Ok(_) => VoterKey::Lacks,
                Err(_) => VoterKey::Unreachable,
            },
            Err(_) => VoterKey::Unreachable,
        };
        answers.insert(id, answer);
    }
    if !plan::ready_to_forget(&answers, &ca_hash) {
        debug!(?answers, "not every voter holds the CA key yet");
        return Ok(());
    }
    ctx.client
        .write(membrane_consensus::Command::ForgetLegacyCaKey)
        .await?;
    info!(voters = ?answers.keys().collect::<Vec<_>>(), "every voter holds the CA key: removed it from the registry");
    Ok(())
}

/// A snapshot without the key, the log purged up to it; if the files still hold a key
/// (sled's stale pages), a rewrite of the database at the next start, which is now.
async fn scrub_storage(ctx: &CaContext) -> anyhow::Result<()> {
    let raft = ctx.client.raft();
    let applied = raft
        .metrics()
        .borrow()
        .last_applied
        .map(|l| l.index)
        .unwrap_or(0);
    raft.trigger().snapshot().await?;
    let snap = wait_for(raft, |m| {
        m.snapshot.map(|l| l.index).filter(|i| *i >= applied)
    })
    .await
    .context("the snapshot without the CA key was not built in time")?;
    raft.trigger().purge_log(snap).await?;
    let purged = wait_for(raft, |m| m.purged.map(|l| l.index).filter(|i| *i >= snap)).await;
    info!(
        snapshot = snap,
        ?purged,
        "Raft log purged up to a snapshot without the CA key"
    );
    // The store does not flush a purge (a crash merely leaves extra entries below the purge
    // point), and the restart below is an exec: the purged entries would come back and be
    // copied into the rewritten database. Saving a snapshot flushes the whole database, and
    // sled's own flusher runs every 500 ms meanwhile.
    raft.trigger().snapshot().await?;
    tokio::time::sleep(PURGE_FLUSH_WAIT).await;
    if !scrub::holds_private_key(&ctx.state.raft_dir())? {
        return Ok(());
    }
    if purged.is_none() || ctx.rewrote_at_start {
        bail!("the Raft storage still holds the CA key (log not purged yet, or rewritten at this start already); trying again later");
    }
    scrub::request_rewrite(&ctx.state.raft_dir())?;
    ctx.restart
        .request("rewrite the Raft database without the old CA key");
    Ok(())
}

async fn wait_for(
    raft: &membrane_consensus::Raft,
    f: impl Fn(&openraft::RaftMetrics<u64, openraft::BasicNode>) -> Option<u64>,
) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f(&raft.metrics().borrow()) {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs renewal until the agent stops: sleeps until the certificate is due, renews it, and
/// asks for the restart that puts it to use.
pub async fn renewal(ctx: CaContext) {
    tokio::spawn(record_own_certificate(ctx.clone()));
    loop {
        let now = crate::clock::unix_now();
        let decision = match current_cert(&ctx.state) {
            Ok(info) => renewal::decide(
                info.not_before,
                info.not_after,
                now - renewal::stagger_secs(ctx.me.node_id),
            ),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot read this node's certificate; renewing it");
                renewal::Renewal::Due
            }
        };
        if decision == renewal::Renewal::Due {
            match renew_now(&ctx).await {
                Ok(info) => {
                    info!(serial = %info.serial_hex, not_after = info.not_after, "certificate renewed; restarting the agent to use it");
                    ctx.restart.request("use the renewed certificate");
                    return;
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "certificate renewal failed; retrying");
                    tokio::time::sleep(RENEWAL_RETRY).await;
                    continue;
                }
            }
        }
        let secs = renewal::sleep_secs(
            decision,
            now - renewal::stagger_secs(ctx.me.node_id),
            RENEWAL_MAX_SLEEP_SECS,
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

/// Makes the registry's record of this node's certificate match `tls/node.crt`: the first
/// node's certificate (signed by `membrane init`), one issued before the registry recorded
/// certificates, or a renewal whose answer was lost. Retries until the record matches.
async fn record_own_certificate(ctx: CaContext) {
    loop {
        tokio::time::sleep(CUSTODY_PERIOD).await;
        let Ok(info) = current_cert(&ctx.state) else {
            continue;
        };
        let recorded = ctx.client.local(|r| {
            r.node(ctx.me.node_id)?;
            Some(r.certificate(ctx.me.node_id).map(|c| c.serial.clone()))
        });
        let Some(recorded) = recorded else {
            continue; // this node's record has not reached its registry copy yet
        };
        if recorded.as_deref() == Some(info.serial_hex.as_str()) {
            return;
        }
        let Ok(tls_key_sha256) = info.spki_sha256_hex.parse() else {
            warn!("the key digest of this node's certificate does not parse");
            return;
        };
        let cert = membrane_consensus::registry::CertRecord {
            serial: info.serial_hex.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            tls_key_sha256,
        };
        match ctx
            .client
            .write(membrane_consensus::Command::RecordCertificate {
                node_id: ctx.me.node_id,
                cert,
            })
            .await
        {
            Ok(_) => {
                info!(serial = %info.serial_hex, "recorded this node's certificate in the registry");
                return;
            }
            Err(e) => debug!(error = %e, "recording this node's certificate failed; retrying"),
        }
    }
}

fn current_cert(state: &StateDir) -> anyhow::Result<CertInfo> {
    let (_, pem) = state.certificates()?;
    Ok(cert_info_from_pem(&pem)?)
}

/// Asks a voter (this node first, if it is one) to sign a new certificate for this node's
/// current key, checks it and writes it to `tls/node.crt`. The agent uses it after its
/// next start.
pub async fn renew_now(ctx: &CaContext) -> anyhow::Result<CertInfo> {
    let keys = NodeKeys::load_or_create(&ctx.state.keys_dir())?;
    let csr_der = keys.csr_der(&ctx.me.node_name)?;
    let (ca_pem, _) = ctx.state.certificates()?;
    let our_ca = ca_hash_of_cert_der(&crate::transport::first_cert_der(&ca_pem)?)?;
    let mut voters = other_voters(ctx);
    let (all_voters, _) = ctx.client.membership();
    if all_voters.contains(&ctx.me.node_id) {
        voters.insert(0, (ctx.me.node_id, ctx.me.rpc_addr.clone()));
    }
    let mut errors = Vec::new();
    for (id, addr) in voters {
        let attempt = async {
            let resp = ca_client(ctx, id, &addr)?
                .renew(RenewRequest {
                    csr_der: csr_der.clone(),
                })
                .await
                .map_err(|s| anyhow!("{}", s.message()))?
                .into_inner();
            let info = cert_info_from_pem(&resp.node_cert_pem)?;
            let der = crate::transport::first_cert_der(&resp.node_cert_pem)?;
            if info.spki_sha256_hex != keys.tls_public_key_sha256() {
                bail!("the certificate returned is for another key");
            }
            if node_id_from_cert_der(&der) != Some(ctx.me.node_id) {
                bail!("the certificate returned names another node");
            }
            let their_ca =
                ca_hash_of_cert_der(&crate::transport::first_cert_der(&resp.ca_cert_pem)?)?;
            if their_ca != our_ca {
                bail!("the certificate is from CA {their_ca}, not this node's {our_ca}");
            }
            ctx.state.write_node_cert(&resp.node_cert_pem)?;
            anyhow::Ok(info)
        }
        .await;
        match attempt {
            Ok(info) => return Ok(info),
            Err(e) => errors.push(format!("node {id}: {e:#}")),
        }
    }
    if errors.is_empty() {
        bail!("no voter is known to ask for a certificate");
    }
    bail!("no voter renewed the certificate: {}", errors.join("; "))
}
