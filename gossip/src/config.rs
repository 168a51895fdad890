//! What a node needs to start gossiping, and the failure-detector settings.
//!
//! The defaults are chosen so that a node that stops is marked down by every other node
//! within 3 s on a LAN, and an idle, healthy cluster never marks anyone down; ALGORITHM.md
//! derives them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig};
use membrane_crypto::seal::Keyring;

use crate::error::GossipError;
use crate::meta::NodeMeta;
use crate::peers::{NodeSecret, Peers};

/// Time between two gossip rounds (and between two heartbeats of a node).
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
/// Phi above which a node is down. chitchat's phi is "time since the last heartbeat, in mean
/// heartbeat intervals", so 8 means about 8 missed rounds: 1.6 s at 200 ms.
pub const DEFAULT_PHI_THRESHOLD: f64 = 8.0;
/// Heartbeat intervals the detector averages over (100 rounds = the last 20 s).
pub const DEFAULT_SAMPLING_WINDOW: usize = 100;
/// How long a dead node's state is kept before chitchat forgets it. Longer than the
/// autopilot's removal threshold (24 h), so a node is reported down, not unknown, until the
/// registry removes it.
pub const DEFAULT_DEAD_NODE_GRACE: Duration = Duration::from_secs(48 * 3600);

/// Settings of one node's gossip. Build with [`GossipConfig::new`], then set the seeds.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// What this node publishes; `meta.id` is its node id (chitchat's node id, as a string).
    pub meta: NodeMeta,
    /// Where the UDP socket binds (may be 0.0.0.0).
    pub listen_addr: SocketAddr,
    /// Where the others reach this node (must be a concrete address).
    pub advertise_addr: SocketAddr,
    /// Nodes to contact first; any live member will do, and dead seeds are harmless.
    pub seeds: Vec<SocketAddr>,
    /// Cluster keys; each packet is sealed under the pair key derived from one of them (the
    /// primary) for its destination. Must have a primary key.
    pub keyring: Keyring,
    /// This node's X25519 secret, half of every pair key.
    pub secret: NodeSecret,
    /// The members: only they are sealed for and opened from.
    pub peers: Peers,
    /// Where the replay high-water marks are kept across restarts (`None`: in memory only,
    /// a restart reopens the windows).
    pub replay_state: Option<PathBuf>,
    /// Name of the cluster; nodes of another cluster refuse each other's gossip.
    pub cluster: String,
    /// This process's start time in ms: the sealing epoch (nonces and replay windows restart
    /// with it) and chitchat's generation (a restarted node is a new chitchat identity).
    /// Must grow across restarts of a node.
    pub epoch: u64,
    /// Time between gossip rounds. Also sets the detector's prior interval (one round) and
    /// the longest interval it learns from (ten rounds).
    pub gossip_interval: Duration,
    /// Phi above which a node is down.
    pub phi_threshold: f64,
    /// Heartbeat intervals the failure detector averages over.
    pub sampling_window: usize,
    /// How long chitchat keeps a dead node's state before forgetting it.
    pub dead_node_grace: Duration,
}

impl GossipConfig {
    /// Settings with the defaults above, no seeds, no replay file, and the current time as
    /// the epoch.
    pub fn new(
        meta: NodeMeta,
        listen_addr: SocketAddr,
        advertise_addr: SocketAddr,
        keyring: Keyring,
        cluster: &str,
        secret: NodeSecret,
        peers: Peers,
    ) -> Self {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        GossipConfig {
            meta,
            listen_addr,
            advertise_addr,
            seeds: Vec::new(),
            keyring,
            secret,
            peers,
            replay_state: None,
            cluster: cluster.to_string(),
            epoch,
            gossip_interval: DEFAULT_GOSSIP_INTERVAL,
            phi_threshold: DEFAULT_PHI_THRESHOLD,
            sampling_window: DEFAULT_SAMPLING_WINDOW,
            dead_node_grace: DEFAULT_DEAD_NODE_GRACE,
        }
    }

    /// The time without a heartbeat after which a node with a regular heartbeat every round
    /// is declared down (before the up-to-one-round delay of the next liveness check).
    pub fn expected_detection_time(&self) -> Duration {
        self.gossip_interval.mul_f64(self.phi_threshold)
    }

    /// Refuses settings that cannot work, before anything is bound.
    pub(crate) fn validate(&self) -> Result<(), GossipError> {
        let bad = |m: String| Err(GossipError::InvalidConfig(m));
        if self.keyring.primary().is_none() {
            return bad("the keyring has no primary key; install a gossip key first".into());
        }
        if self.advertise_addr.ip().is_unspecified() || self.advertise_addr.port() == 0 {
            return bad(format!(
                "advertise address {} is not one others can reach; give a concrete IP and port",
                self.advertise_addr
            ));
        }
        if self.gossip_interval < Duration::from_millis(10) {
            return bad(format!(
                "gossip interval {:?} is below 10 ms",
                self.gossip_interval
            ));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 1.0) {
            return bad(format!(
                "phi threshold {} must be a number above 1",
                self.phi_threshold
            ));
        }
        if self.sampling_window == 0 {
            return bad("the sampling window must hold at least one interval".into());
        }
        if self.cluster.is_empty() {
            return bad("the cluster name is empty".into());
        }
        Ok(())
    }

    /// chitchat's configuration for these settings.
    pub(crate) fn chitchat_config(&self) -> ChitchatConfig {
        ChitchatConfig {
            chitchat_id: ChitchatId::new(self.meta.id.to_string(), self.epoch, self.advertise_addr),
            cluster_id: self.cluster.clone(),
            gossip_interval: self.gossip_interval,
            listen_addr: self.listen_addr,
            seed_nodes: self.seeds.iter().map(|s| s.to_string()).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: self.phi_threshold,
                sampling_window_size: self.sampling_window,
                // A gap this long is an outage, not a sample: learning from it would stretch
                // the mean and slow the next detection.
                max_interval: self.gossip_interval * 10,
                // The prior mean (chitchat weighs it as 5 samples): one round, what a healthy
                // peer's heartbeat interval is.
                initial_interval: self.gossip_interval,
                dead_node_grace_period: self.dead_node_grace,
            },
            // Tombstones of deleted keys; we delete none today.
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            // V1 compresses digests, but every node must decode it first: stay on V0 until a
            // release that speaks V1 is everywhere.
            protocol_version: chitchat::ProtocolVersion::V0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GossipConfig {
        let a: SocketAddr = "127.0.0.1:7701".parse().unwrap();
        GossipConfig::new(
            NodeMeta {
                id: 3,
                ..Default::default()
            },
            a,
            a,
            Keyring::single(1, [1; 32]),
            "c",
            NodeSecret::from_bytes([3; 32]),
            Peers::default(),
        )
    }

    #[test]
    fn defaults_detect_within_the_3s_target() {
        let c = config();
        c.validate().unwrap();
        // 8 rounds of 200 ms, plus one round for the next liveness check, plus margin.
        assert!(c.expected_detection_time() + c.gossip_interval <= Duration::from_secs(2));
        let cc = c.chitchat_config();
        assert_eq!(&*cc.chitchat_id.node_id, "3");
        assert_eq!(cc.chitchat_id.generation_id, c.epoch);
    }

    #[test]
    fn unusable_settings_are_refused() {
        let mut c = config();
        c.keyring = Keyring::default();
        assert!(c.validate().is_err());
        let mut c = config();
        c.advertise_addr = "0.0.0.0:7701".parse().unwrap();
        assert!(c.validate().is_err());
        let mut c = config();
        c.gossip_interval = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = config();
        c.phi_threshold = f64::NAN;
        assert!(c.validate().is_err());
    }
}
