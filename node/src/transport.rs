//! Connections: mutual TLS between nodes, the pinned-CA connection a joining node uses, and
//! the Unix socket between the CLI and its local agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use membrane_crypto::ca::{node_server_name, NODE_SERVER_NAME};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

/// TLS material of a node that has joined.
#[derive(Clone)]
pub struct NodeTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl NodeTls {
    /// Server side: presents [node cert, CA] (a joining node pins the CA from this chain) and
    /// asks for a client certificate from the cluster CA. The certificate is optional at the
    /// TLS layer only so that `Join` can be reached without one; every other service is
    /// wrapped in [`crate::authz::Authenticator`].
    pub fn server_config(&self) -> ServerTlsConfig {
        let chain = format!("{}\n{}", self.cert_pem.trim_end(), self.ca_pem);
        ServerTlsConfig::new()
            .identity(Identity::from_pem(chain, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    /// Client side: trusts only the cluster CA, presents this node's certificate. The server
    /// name is set per target (`node-<id>.membrane`) by whoever dials: [`NodeTls::channel`],
    /// and the Raft network for each target.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// A lazily connecting channel to node `node_id` at `addr`; the server must present
    /// node `node_id`'s certificate, so another node's cannot stand in for it.
    pub fn channel(&self, addr: &str, node_id: u64) -> Result<Channel, tonic::transport::Error> {
        Ok(Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(self.client_config().domain_name(node_server_name(node_id)))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .connect_lazy())
    }
}

/// A channel to a node that the caller does not trust yet: the server is accepted only if
/// it presents a CA whose public key hashes to `ca_hash` (kubeadm's discovery model).
pub async fn pinned_channel(addr: &str, ca_hash: [u8; 32]) -> anyhow::Result<Channel> {
    let config = Arc::new(membrane_crypto::tls::pinned_ca_client_config(ca_hash)?);
    let addr = addr.to_string();
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let connector = tower::service_fn(move |_: http::Uri| {
        let config = config.clone();
        let addr = addr.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let name = rustls::pki_types::ServerName::try_from(NODE_SERVER_NAME)
                .map_err(std::io::Error::other)?
                .to_owned();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector(connector).await?)
}

/// A channel to the local agent's Unix socket.
pub async fn unix_channel(path: &Path) -> anyhow::Result<Channel> {
    let path: PathBuf = path.to_path_buf();
    // The URI is required by tonic but unused: the connector ignores it.
    let endpoint = Endpoint::from_static("http://agent.sock").timeout(Duration::from_secs(60));
    let connector = tower::service_fn(move |_: http::Uri| {
        let path = path.clone();
        async move {
            Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
        }
    });
    Ok(endpoint.connect_with_connector(connector).await?)
}

/// Formats an error with all its causes, so a TLS failure deep in a transport error is seen.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// The DER of the first certificate in `pem`.
pub fn first_cert_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    let cert = rustls_pemfile::certs(&mut reader)
        .next()
        .ok_or_else(|| anyhow::anyhow!("no certificate in PEM"))??;
    Ok(cert.to_vec())
}
