use std::time::Duration;

use membrane_crypto::ca::{parse_ca_hash, ClusterCa, NODE_SERVER_NAME};
use membrane_crypto::keys::NodeKeys;
use membrane_jepsen::{in_netns, require_root, Cluster};
use membrane_proto::v1::cluster_client::ClusterClient;
use membrane_proto::v1::join_client::JoinClient;
use membrane_proto::v1::raft_client::RaftClient;
use membrane_proto::v1::{ForwardRequest, JoinRequest, RaftPayload};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::support::anonymous_channel;

/// A peer without a certificate from the cluster CA cannot call any node RPC but Join, and a
/// peer with a certificate from another CA cannot even complete the handshake.
#[test]
fn t30_peers_without_a_cluster_certificate_are_refused() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("untrusted", 2)?;
    let addr = c.lab().host(1).rpc_addr().to_string();
    let pin = parse_ca_hash(c.ca_hash())?;
    let netns = c.lab().host(2).netns().to_string();
    let tmp = tempfile::tempdir()?;
    let key_dir = tmp.path().to_path_buf();
    let ca_pem = std::fs::read_to_string(c.lab().host(1).state_dir().join("tls/ca.crt"))?;

    in_netns(&netns, move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let _ = rustls::crypto::ring::default_provider().install_default();
            // 1. TLS without a client certificate.
            let ch = anonymous_channel(addr.clone(), pin).await?;
            let err = ClusterClient::new(ch.clone())
                .write(ForwardRequest {
                    data: vec![1, 2, 3],
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
            let err = RaftClient::new(ch.clone())
                .vote(RaftPayload { data: vec![] })
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
            let err = RaftClient::new(ch.clone())
                .append_entries(RaftPayload { data: vec![] })
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
            // Join is reachable without a certificate, and refuses a bad token.
            let err = JoinClient::new(ch)
                .join(JoinRequest {
                    token: "abcdef.0123456789abcdef".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_ne!(err.code(), tonic::Code::Unauthenticated);

            // 2. A certificate from a CA the cluster does not know.
            let rogue = ClusterCa::generate("rogue")?;
            let keys = NodeKeys::load_or_create(&key_dir)?;
            let cert = rogue.sign_node_csr(&keys.csr_der("rogue")?, 1)?;
            // We trust the real cluster CA, so the only thing wrong is our certificate.
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca_pem))
                .identity(Identity::from_pem(&cert, keys.tls_key_pem()))
                .domain_name(NODE_SERVER_NAME);
            let ch = Endpoint::from_shared(format!("https://{addr}"))?
                .tls_config(tls)?
                .connect_timeout(Duration::from_secs(3))
                .connect_lazy();
            // Had the server accepted the certificate, the RPC would have run and refused the
            // empty payload with InvalidArgument; a TLS refusal is a transport error instead.
            let err = ClusterClient::new(ch)
                .write(ForwardRequest { data: vec![] })
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Unknown
                        | tonic::Code::Internal
                        | tonic::Code::Cancelled
                ),
                "a rogue peer must not get an answer: {err:?}"
            );
            Ok(())
        })
    })??;

    // The cluster is unharmed.
    let nodes = c.cli_json(1, &["node", "list"])?;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 2);
    Ok(())
}
