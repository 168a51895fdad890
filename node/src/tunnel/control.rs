//! The tunnel's control loop: keeps the device, the datapath's encryption flag, the
//! [`Tunnel`]'s keys, the device's [`PeerRoutes`] and the host routes in step with the
//! registry, and carries out this node's key [`plan`].
//!
//! Every round, in one read of the registry copy: the [`TunnelView`] and the plan. The view
//! is applied first (local secrets, then peers), so a `Report` in the plan never claims a
//! peer the tunnel has not installed. Key distribution is only through Raft (mTLS): nothing
//! here goes through the tunnel being rekeyed.
//!
//! Turning encryption on: the device starts (TUN + UDP socket), then the datapath sends
//! remote-pod traffic into the TUN (`set_encryption`), then the host routes to remote pod
//! CIDRs go via the TUN. A peer gets an ipcache `key_index` (read by the reconcile loop from
//! [`TunnelShared::keys_ready`]) only once this node has a send epoch for it; until then the
//! datapath drops its packets as `no-key`, never sending them in clear. Turning it off is
//! the reverse; the routes go with the TUN.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use membrane_consensus::registry::{Command, Response, X25519Public};
use membrane_crypto::tunnel::{CipherKind, EpochSecret, Tunnel};
use tracing::{debug, info, warn};

use super::device::{DeviceConfig, DeviceCounters, PeerRoute, PeerRoutes, TunnelDevice};
use super::keystore::Keystore;
use super::plan::{plan, PlanInput, TunnelAction};
use super::view::{tunnel_view, TunnelView};
use crate::cluster::gossip::Liveness;
use crate::datapath::NodeDatapath;
use crate::registry::RegistryClient;

/// How often a round runs when the registry did not change.
const ROUND_EVERY: Duration = Duration::from_secs(2);
/// How often the registry's applied index is polled.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// The agent's tunnel flags.
#[derive(Clone, Debug)]
pub struct TunnelOptions {
    /// `--encryption-port` (UDP).
    pub port: u16,
    /// `--encryption-device` (TUN name).
    pub device: String,
    /// `--key-rotation-interval`, seconds.
    pub rotation_interval_secs: i64,
    /// `--tunnel-workers`.
    pub workers: usize,
    /// The TUN's MTU.
    pub mtu: u32,
}

/// What the control loop shares with the reconcile loop and the local API.
#[derive(Default)]
pub struct TunnelShared {
    ready: Mutex<BTreeSet<u64>>,
    generation: AtomicU64,
    tunnel: Mutex<Option<Arc<Tunnel>>>,
    device: Mutex<Option<TunnelDevice>>,
    device_name: Mutex<String>,
}

impl TunnelShared {
    /// Peers this node has a send key for, with the device up: their ipcache entries get a
    /// key index. Empty while encryption is off.
    pub fn keys_ready(&self) -> BTreeSet<u64> {
        lock(&self.ready).clone()
    }

    /// Grows whenever [`Self::keys_ready`] changes, so that the reconcile loop syncs again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn set_ready(&self, ready: BTreeSet<u64>) {
        let mut cur = lock(&self.ready);
        if *cur != ready {
            *cur = ready;
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The tunnel, once the loop has started it.
    pub fn tunnel(&self) -> Option<Arc<Tunnel>> {
        lock(&self.tunnel).clone()
    }

    /// The device's counters and name, if it runs.
    pub fn device(&self) -> Option<(String, DeviceCounters)> {
        lock(&self.device)
            .as_ref()
            .map(|d| (d.tun_name().to_string(), d.counters()))
    }

    /// The configured device name (also when it does not run).
    pub fn device_name(&self) -> String {
        lock(&self.device_name).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the loop needs.
pub struct ControlContext {
    pub client: Arc<RegistryClient>,
    pub datapath: Arc<NodeDatapath>,
    pub me: u64,
    pub node_ip: Ipv4Addr,
    pub tunnel_dir: PathBuf,
    pub liveness: Liveness,
    pub opts: TunnelOptions,
    pub shared: Arc<TunnelShared>,
}

/// A peer's keys as handed to the tunnel: accepted epochs and the send epoch.
type PeerKeys = (BTreeMap<u32, [u8; 32]>, Option<u32>);

/// The loop's own state between rounds.
struct Loop {
    ctx: ControlContext,
    keystore: Keystore,
    tunnel: Arc<Tunnel>,
    routes: Arc<PeerRoutes>,
    secrets: BTreeMap<u32, EpochSecret>,
    /// What was last handed to the tunnel, per peer.
    applied: BTreeMap<u64, PeerKeys>,
    /// Host routes to remote pod CIDRs via the TUN, as installed.
    host_routes: BTreeSet<Ipv4Net>,
    /// The datapath's encryption flag as last set (None: not yet this run).
    datapath_on: Option<bool>,
}

/// Runs forever. Returns early only when the state directory cannot hold the tunnel's
/// files (logged: with encryption on, remote pods are then unreachable, never in clear).
pub async fn run(ctx: ControlContext) {
    *lock(&ctx.shared.device_name) = ctx.opts.device.clone();
    let keystore = match Keystore::open(&ctx.tunnel_dir) {
        Ok(k) => k,
        Err(e) => {
            warn!(error = %e, "the tunnel cannot start");
            return;
        }
    };
    // Before any packet is sealed: a new boot, so no (key, nonce) pair of a previous run
    // comes back.
    let boot = match keystore.next_boot() {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "the tunnel cannot start");
            return;
        }
    };
    let cluster_id = loop {
        if let Some(id) = ctx.client.local(|r| r.cluster().map(|c| c.cluster_id)) {
            break id;
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    let tunnel = Arc::new(Tunnel::new(cluster_id, ctx.me, boot, CipherKind::Ring));
    let mut secrets = BTreeMap::new();
    match keystore.load() {
        Ok(stored) => {
            for (epoch, bytes) in stored {
                let secret = EpochSecret::from_bytes(*bytes);
                tunnel.set_local_secret(epoch, EpochSecret::from_bytes(*bytes));
                secrets.insert(epoch, secret);
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot read the stored tunnel secrets; new ones are generated as epochs need them")
        }
    }
    *lock(&ctx.shared.tunnel) = Some(tunnel.clone());
    info!(boot, epochs = ?secrets.keys().collect::<Vec<_>>(), "tunnel keys loaded");
    let mut l = Loop {
        ctx,
        keystore,
        tunnel,
        routes: Arc::new(PeerRoutes::new()),
        secrets,
        applied: BTreeMap::new(),
        host_routes: BTreeSet::new(),
        datapath_on: None,
    };
    let mut seen = None;
    let mut last = Instant::now() - ROUND_EVERY;
    loop {
        let applied = l.ctx.client.applied_index();
        if applied != seen || last.elapsed() >= ROUND_EVERY {
            seen = applied;
            last = Instant::now();
            if let Err(e) = l.round().await {
                warn!(error = %format!("{e:#}"), "tunnel round failed; retried");
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

impl Loop {
    async fn round(&mut self) -> anyhow::Result<()> {
        let me = self.ctx.me;
        let leader = self.ctx.client.raft().metrics().borrow().current_leader == Some(me);
        let down = self.ctx.liveness.down_for();
        let publics: BTreeMap<u32, [u8; 32]> =
            self.secrets.iter().map(|(e, s)| (*e, s.public())).collect();
        let now = crate::clock::unix_now();
        let port = self.ctx.opts.port;
        let interval = self.ctx.opts.rotation_interval_secs;
        let (view, actions) = self.ctx.client.local(|r| {
            let live: BTreeSet<u64> = r
                .nodes()
                .map(|n| n.id)
                .filter(|id| *id == me || !down.contains_key(id))
                .collect();
            let actions = plan(&PlanInput {
                reg: r,
                me,
                leader,
                live: &live,
                secrets: &publics,
                now,
                rotation_interval: interval,
                grace: super::RETIRE_GRACE_SECS,
            });
            (tunnel_view(r, me, port), actions)
        });
        self.apply_view(&view).await?;
        for action in actions {
            self.act(action).await?;
        }
        Ok(())
    }

    async fn apply_view(&mut self, view: &TunnelView) -> anyhow::Result<()> {
        // Peers first: the tunnel must know them before the device may route to them.
        for (id, p) in &view.peers {
            let want = (p.accept.clone(), p.send_epoch);
            if self.applied.get(id) != Some(&want) {
                self.tunnel.set_peer(*id, p.accept.clone(), p.send_epoch);
                debug!(peer = id, send_epoch = ?p.send_epoch, accept = ?p.accept.keys().collect::<Vec<_>>(), "tunnel peer set");
                self.applied.insert(*id, want);
            }
        }
        let gone: Vec<u64> = self
            .applied
            .keys()
            .copied()
            .filter(|id| !view.peers.contains_key(id))
            .collect();
        for id in gone {
            self.tunnel.remove_peer(id);
            self.applied.remove(&id);
            info!(peer = id, "tunnel peer removed");
        }
        let routes: Vec<PeerRoute> = view
            .peers
            .values()
            .map(|p| PeerRoute {
                peer: p.node_id,
                pod_cidr: p.pod_cidr,
                node_ip: *p.underlay.ip(),
                underlay: p.underlay,
            })
            .collect();
        if let Err(e) = self.routes.update(routes) {
            warn!(error = %e, "cannot update the tunnel's peer routes");
        }

        if view.enabled {
            self.ensure_device()?;
            if self.datapath_on != Some(true) {
                let ifindex = lock(&self.ctx.shared.device)
                    .as_ref()
                    .map(|d| d.tun_ifindex());
                self.ctx.datapath.set_encryption(ifindex)?;
                self.datapath_on = Some(true);
                info!(
                    ?ifindex,
                    "encryption on: remote pod traffic goes through the tunnel"
                );
            }
            let cidrs: BTreeSet<Ipv4Net> = view.peers.values().map(|p| p.pod_cidr).collect();
            self.sync_host_routes(&cidrs).await;
            self.ctx
                .shared
                .set_ready(view.ready().map(|p| p.node_id).collect());
        } else {
            self.ctx.shared.set_ready(BTreeSet::new());
            if self.datapath_on != Some(false) {
                self.ctx.datapath.set_encryption(None)?;
                self.datapath_on = Some(false);
            }
            let device = lock(&self.ctx.shared.device).take();
            if let Some(d) = device {
                // The TUN's routes go with it.
                d.stop();
                self.host_routes.clear();
                info!("encryption off: tunnel device stopped");
            }
        }
        Ok(())
    }

    fn ensure_device(&mut self) -> anyhow::Result<()> {
        let mut slot = lock(&self.ctx.shared.device);
        if slot.is_some() {
            return Ok(());
        }
        let cfg = DeviceConfig {
            tun_name: self.ctx.opts.device.clone(),
            listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.ctx.opts.port),
            mtu: self.ctx.opts.mtu,
            workers: self.ctx.opts.workers,
        };
        let d = TunnelDevice::start(cfg, self.tunnel.clone(), self.routes.clone())
            .map_err(|e| anyhow::anyhow!("cannot start the tunnel device: {e}"))?;
        info!(device = d.tun_name(), ifindex = d.tun_ifindex(), features = ?d.features(), "tunnel device started");
        *slot = Some(d);
        // A new device: the datapath must learn its ifindex, and it has no routes yet.
        self.datapath_on = None;
        self.host_routes.clear();
        Ok(())
    }

    /// Routes the host's own traffic to remote pod CIDRs through the TUN (source: the node
    /// IP, so that the peer's inner-source check accepts it).
    async fn sync_host_routes(&mut self, want: &BTreeSet<Ipv4Net>) {
        if *want == self.host_routes {
            return;
        }
        let Some(ifindex) = lock(&self.ctx.shared.device)
            .as_ref()
            .map(|d| d.tun_ifindex())
        else {
            return;
        };
        let handle = match rtnetlink::new_connection() {
            Ok((conn, handle, _)) => {
                tokio::spawn(conn);
                handle
            }
            Err(e) => {
                warn!(error = %e, "cannot open rtnetlink for the tunnel routes");
                return;
            }
        };
        for cidr in want.difference(&self.host_routes.clone()) {
            let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(cidr.network(), cidr.prefix_len())
                .output_interface(ifindex)
                .pref_source(self.ctx.node_ip)
                .build();
            match handle.route().add(route).replace().execute().await {
                Ok(()) => {
                    self.host_routes.insert(*cidr);
                }
                Err(e) => warn!(%cidr, error = %e, "cannot route a remote pod CIDR via the tunnel"),
            }
        }
        for cidr in self
            .host_routes
            .difference(want)
            .copied()
            .collect::<Vec<_>>()
        {
            let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(cidr.network(), cidr.prefix_len())
                .output_interface(ifindex)
                .build();
            if let Err(e) = handle.route().del(route).execute().await {
                debug!(%cidr, error = %e, "tunnel route already gone");
            }
            self.host_routes.remove(&cidr);
        }
    }

    async fn write(&self, cmd: Command) -> anyhow::Result<Response> {
        self.ctx
            .client
            .write(cmd)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn act(&mut self, action: TunnelAction) -> anyhow::Result<()> {
        let me = self.ctx.me;
        match action {
            TunnelAction::Generate { epoch } => {
                let secret = EpochSecret::generate();
                // On disk before it is published: a key the cluster knows is never lost by
                // a crash here.
                self.keystore.store(epoch, &secret.to_bytes())?;
                let public = secret.public();
                self.tunnel
                    .set_local_secret(epoch, EpochSecret::from_bytes(*secret.to_bytes()));
                self.secrets.insert(epoch, secret);
                self.write(Command::PublishTunnelKey {
                    node_id: me,
                    epoch,
                    public: X25519Public(public),
                })
                .await?;
                info!(epoch, "tunnel key generated and published");
            }
            TunnelAction::Publish { epoch, public } => {
                self.write(Command::PublishTunnelKey {
                    node_id: me,
                    epoch,
                    public: X25519Public(public),
                })
                .await?;
                info!(epoch, "tunnel key published");
            }
            TunnelAction::Report { epoch, peers } => {
                debug!(epoch, ?peers, "reporting installed peers");
                self.write(Command::ReportTunnelEpoch {
                    node_id: me,
                    epoch,
                    peers,
                })
                .await?;
            }
            TunnelAction::Begin => {
                let r = self
                    .write(Command::BeginTunnelEpoch {
                        now: crate::clock::unix_now(),
                    })
                    .await?;
                info!(?r, "tunnel key epoch begun");
            }
            TunnelAction::Activate { epoch } => {
                self.write(Command::ActivateTunnelEpoch {
                    epoch,
                    now: crate::clock::unix_now(),
                })
                .await?;
                info!(epoch, "tunnel key epoch activated");
            }
            TunnelAction::Retire { epoch } => {
                self.write(Command::RetireTunnelEpoch { epoch }).await?;
                info!(epoch, "tunnel key epoch retired");
            }
            TunnelAction::Erase { epoch } => {
                self.tunnel.remove_local_secret(epoch);
                self.secrets.remove(&epoch);
                self.keystore.erase(epoch)?;
                info!(epoch, "tunnel secret of a retired epoch erased");
            }
        }
        Ok(())
    }
}
