//! The joining side: a node with no cluster state proves a token and receives its identity.

use anyhow::{anyhow, bail, Context};
use membrane_crypto::ca::{ca_hash_of_cert_der, parse_ca_hash};
use membrane_crypto::keys::NodeKeys;
use membrane_crypto::token::JoinToken;
use membrane_proto::v1::join_client::JoinClient;
use membrane_proto::v1::JoinRequest;
use tracing::info;

use crate::state::{NodeIdentity, StateDir};
use crate::transport::{error_chain, pinned_channel};

/// What the operator passed with `--join`.
pub struct JoinArgs {
    pub addr: String,
    pub token: String,
    pub ca_hash: String,
}

/// Joins through `args.addr`, then records the certificates and identity in `state`.
pub async fn join(
    state: &StateDir,
    keys: &NodeKeys,
    args: &JoinArgs,
    name: &str,
    rpc_addr: &str,
) -> anyhow::Result<NodeIdentity> {
    // Bad input is refused before anything touches the network.
    let token = JoinToken::parse(&args.token).map_err(|e| anyhow!("malformed --token: {e}"))?;
    let pin = parse_ca_hash(&args.ca_hash).map_err(|e| anyhow!("malformed --ca-hash: {e}"))?;
    let channel = pinned_channel(&args.addr, pin).await.map_err(|e| {
        anyhow!(
            "cannot open a trusted connection to {}: {}. Check the address, and that --ca-hash is the one `membrane init` printed",
            args.addr,
            error_chain(e.as_ref())
        )
    })?;
    let req = JoinRequest {
        token: token.to_string(),
        name: name.to_string(),
        rpc_addr: rpc_addr.to_string(),
        csr_der: keys.csr_der(name)?,
        x25519_public: keys.x25519_public().to_vec(),
    };
    let resp = JoinClient::new(channel)
        .join(req)
        .await
        .map_err(|s| anyhow!("join refused by {}: {}", args.addr, s.message()))?
        .into_inner();

    // The server proved the pinned CA during the handshake; check it hands back the same
    // (during a CA rotation, among the two it hands back).
    let mut got = Vec::new();
    for pem in crate::ca::bundle::split(&resp.ca_cert_pem) {
        let ca_der = crate::transport::first_cert_der(&pem)
            .context("the CA certificate in the join response")?;
        got.push(ca_hash_of_cert_der(&ca_der)?);
    }
    if got.is_empty() {
        bail!("the join response holds no CA certificate");
    }
    if !got.iter().any(|h| parse_ca_hash(h).is_ok_and(|h| h == pin)) {
        bail!(
            "the cluster answered with CA {}, not the pinned {}; refusing it",
            got.join(" and "),
            args.ca_hash
        );
    }
    let cluster_id = u8::try_from(resp.cluster_id)
        .map_err(|_| anyhow!("cluster id {} out of range", resp.cluster_id))?;
    // Before the identity: a node with an identity but no trust could never catch up.
    let trust =
        crate::authz::JoinTrust::from_hex_map(resp.member_tls_key_sha256.into_iter().collect())
            .context("the member key hashes in the join response")?;
    trust.save(state.root())?;
    state.write_certificates(&resp.ca_cert_pem, &resp.node_cert_pem)?;
    let identity = NodeIdentity {
        cluster_id,
        cluster_name: resp.cluster_name,
        node_id: resp.node_id,
        node_name: name.to_string(),
        rpc_addr: rpc_addr.to_string(),
    };
    state.write_identity(&identity)?;
    info!(node_id = identity.node_id, cluster = %identity.cluster_name, pod_cidr = %resp.pod_cidr, "joined the cluster");
    Ok(identity)
}
