//! `membrane init`: creates a cluster in this node's state directory.
//!
//! Creates the node keys, the cluster CA, this node's certificate (node id 1), the cluster
//! settings and the first join token, and leaves them in `bootstrap.json` for the first
//! agent start, which commits them to the registry through Raft. The CA key goes to
//! `keys/ca.key` only: node 1 is the first voter, and voters alone hold it.

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use ipnet::Ipv4Net;
use membrane_consensus::registry::{ClusterConfig, GossipKey, NewNode, TokenRecord, X25519Public};
use membrane_crypto::ca::ClusterCa;
use membrane_crypto::keys::NodeKeys;
use membrane_crypto::token::JoinToken;
use serde::Serialize;

use crate::agent::join_command;
use crate::clock::unix_now;
use crate::state::{Bootstrap, NodeIdentity, StateDir};

pub struct InitOptions {
    pub state_dir: PathBuf,
    pub cluster_name: String,
    pub cluster_id: u8,
    pub node_name: String,
    pub advertise: String,
    pub pod_cidr: Ipv4Net,
    pub node_cidr_size: u8,
    pub token_ttl_secs: u64,
}

/// What `init` reports (also as JSON with `--output json`).
#[derive(Serialize)]
pub struct InitReport {
    pub cluster_name: String,
    pub cluster_id: u8,
    pub node_id: u64,
    pub state_dir: String,
    pub ca_hash: String,
    pub token: String,
    pub token_expires_at_unix: i64,
    pub join_command: String,
}

pub fn init(opts: &InitOptions) -> anyhow::Result<InitReport> {
    if opts.cluster_id == 0 {
        bail!("--cluster-id must be between 1 and 255");
    }
    let Ok(advertise) = opts.advertise.parse::<std::net::SocketAddr>() else {
        bail!(
            "--advertise-addr {:?} is not ip:port (e.g. 10.0.0.1:7700)",
            opts.advertise
        );
    };
    let state = StateDir::open(&opts.state_dir)?;
    if let Some(me) = state.identity()? {
        bail!(
            "{} already belongs to cluster {:?} as node {}; use another --state-dir, or remove it to start over",
            state.root().display(),
            me.cluster_name,
            me.node_id
        );
    }
    let keys = NodeKeys::load_or_create(&state.keys_dir())?;
    let ca = ClusterCa::generate(&opts.cluster_name)?;
    let now = unix_now();
    let config = ClusterConfig {
        cluster_id: opts.cluster_id,
        name: opts.cluster_name.clone(),
        pod_pool: opts.pod_cidr,
        node_prefix_len: opts.node_cidr_size,
        ca_cert_pem: ca.cert_pem().to_string(),
        // The key stays on the voters' disks (keys/ca.key), never in the registry.
        legacy_ca_key_pem: String::new(),
        created_at: now,
    };
    config.validate().map_err(|e| anyhow!("{e}"))?;
    let node_cert = ca.sign_node_csr(&keys.csr_der(&opts.node_name)?, 1)?;
    let token = JoinToken::generate();
    let first_token = TokenRecord {
        id: token.id().to_string(),
        secret_hash: token.secret_hash(),
        description: "created by membrane init".into(),
        created_at: now,
        expires_at: now + opts.token_ttl_secs as i64,
        max_uses: crate::agent::DEFAULT_TOKEN_USES,
        uses: 0,
        revoked: false,
    };
    let first_node = NewNode {
        name: opts.node_name.clone(),
        rpc_addr: advertise,
        tls_key_sha256: keys.tls_public_key_sha256().parse()?,
        x25519_public: X25519Public(keys.x25519_public()),
    };
    let expires = first_token.expires_at;
    let gossip_key = GossipKey {
        id: 1,
        key_hex: hex::encode(rand::random::<[u8; 32]>()),
    };
    state.write_bootstrap(&Bootstrap {
        config,
        first_node,
        first_token,
        gossip_key,
    })?;
    state.write_certificates(ca.cert_pem(), &node_cert)?;
    // Node 1 is the first voter: it holds the key from the start.
    state.write_ca_key(ca.key_pem())?;
    state.write_identity(&NodeIdentity {
        cluster_id: opts.cluster_id,
        cluster_name: opts.cluster_name.clone(),
        node_id: 1,
        node_name: opts.node_name.clone(),
        rpc_addr: opts.advertise.clone(),
    })?;
    let ca_hash = ca.hash();
    Ok(InitReport {
        cluster_name: opts.cluster_name.clone(),
        cluster_id: opts.cluster_id,
        node_id: 1,
        state_dir: state.root().display().to_string(),
        join_command: join_command(&opts.advertise, &token.to_string(), &ca_hash),
        ca_hash,
        token: token.to_string(),
        token_expires_at_unix: expires,
    })
}
