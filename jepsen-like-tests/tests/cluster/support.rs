//! What several cluster tests share: a node's saved TLS material used as a thief or a peer
//! would, a runtime for raw RPCs, and the Raft log position a test compares.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use membrane_crypto::ca::{node_server_name, NODE_SERVER_NAME};
use membrane_jepsen::Cluster;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A node's TLS material as saved in its state directory (`tls/`, `keys/`).
#[derive(Clone)]
pub struct SavedTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl SavedTls {
    pub fn read(state_dir: &Path) -> anyhow::Result<SavedTls> {
        Ok(SavedTls {
            ca: std::fs::read_to_string(state_dir.join("tls/ca.crt"))?,
            cert: std::fs::read_to_string(state_dir.join("tls/node.crt"))?,
            key: std::fs::read_to_string(state_dir.join("keys/tls.key"))?,
        })
    }

    /// What a node's own client uses: the cluster CA, this certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }

    /// A channel to node `id` at `addr`, verifying its own name.
    pub fn channel(&self, addr: &str, id: u64) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(self.client_config().domain_name(node_server_name(id)))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .connect_lazy())
    }
}

/// A single-threaded runtime for raw RPCs, with rustls' provider installed.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The last Raft log index host 1's agent reports.
pub fn last_log_index(c: &Cluster) -> anyhow::Result<u64> {
    let s = c.status(1)?;
    s["raft"]["last_log_index"]
        .as_u64()
        .or_else(|| s["last_log_index"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("no last_log_index in status: {s}"))
}

/// The last log index once it has not moved for `quiet`: a freshly formed cluster still
/// commits membership changes and certificate records for a moment, which a test that
/// checks "nothing was proposed" must not count.
pub fn settled_log_index(c: &Cluster, quiet: Duration) -> anyhow::Result<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = last_log_index(c)?;
    let mut since = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = last_log_index(c)?;
        if now != last {
            last = now;
            since = std::time::Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(now);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the Raft log kept moving for 30 s (last index {now})"
        );
    }
}

/// A channel that verifies the server by the pinned CA but presents no certificate, as a
/// joining node's does.
pub async fn anonymous_channel(addr: String, pin: [u8; 32]) -> anyhow::Result<Channel> {
    let config = Arc::new(membrane_crypto::tls::pinned_ca_client_config(pin)?);
    let connector = tower::service_fn(move |_: http::Uri| {
        let (config, addr) = (config.clone(), addr.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let name = rustls::pki_types::ServerName::try_from(NODE_SERVER_NAME)
                .unwrap()
                .to_owned();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(Endpoint::from_static("http://node")
        .connect_with_connector(connector)
        .await?)
}
