//! A joining node reaches a real TLS server (tokio-rustls on loopback) that presents
//! `[leaf, CA]`, with the right CA pin, a wrong pin, and a server whose chain is forged.

use std::net::SocketAddr;
use std::sync::Arc;

use membrane_crypto::ca::parse_ca_hash;
use membrane_crypto::tls::{
    find_crypto_error, pinned_ca_client_config, pinned_ca_client_config_capturing,
};
use membrane_crypto::{ClusterCa, CryptoError, NodeKeys, NODE_SERVER_NAME};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Node {
    _dir: tempfile::TempDir,
    keys: NodeKeys,
    leaf_der: Vec<u8>,
}

fn node_signed_by(ca: &ClusterCa, id: u64) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let keys = NodeKeys::load_or_create(dir.path()).unwrap();
    let pem = ca.sign_node_csr(&keys.csr_der("n").unwrap(), id).unwrap();
    let leaf_der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    Node {
        _dir: dir,
        keys,
        leaf_der,
    }
}

fn server_config(chain: Vec<Vec<u8>>, key_pem: &str) -> Arc<ServerConfig> {
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Serves one TLS connection: reads "ping", answers "pong". Handshake errors are ignored (the
/// client side is what the tests check).
async fn serve(config: Arc<ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        if let Ok(mut tls) = TlsAcceptor::from(config).accept(tcp).await {
            let mut buf = [0u8; 4];
            if tls.read_exact(&mut buf).await.is_ok() && &buf == b"ping" {
                let _ = tls.write_all(b"pong").await;
                let _ = tls.shutdown().await;
            }
        }
    });
    addr
}

/// Connects by IP address (as a joining node does), exchanges ping/pong, returns the ALPN
/// protocol negotiated.
async fn connect(config: ClientConfig, addr: SocketAddr) -> std::io::Result<Option<Vec<u8>>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"pong");
    Ok(tls.get_ref().1.alpn_protocol().map(|p| p.to_vec()))
}

/// The CryptoError inside a failed handshake's io::Error, if it is one of ours.
fn crypto_error(err: &std::io::Error) -> Option<&CryptoError> {
    find_crypto_error(err)
}

#[tokio::test]
async fn right_pin_connects_and_captures_the_ca() {
    let ca = ClusterCa::generate("test").unwrap();
    let node = node_signed_by(&ca, 1);
    let addr = serve(server_config(
        vec![node.leaf_der.clone(), ca.cert_der().to_vec()],
        node.keys.tls_key_pem(),
    ))
    .await;

    let pin = parse_ca_hash(&ca.hash()).unwrap();
    let (config, verifier) = pinned_ca_client_config_capturing(pin).unwrap();
    assert_eq!(verifier.matched_ca_der(), None);
    let alpn = connect(config, addr).await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(verifier.matched_ca_der().as_deref(), Some(ca.cert_der()));
}

#[tokio::test]
async fn plain_config_with_right_pin_connects() {
    let ca = ClusterCa::generate("test").unwrap();
    let node = node_signed_by(&ca, 2);
    let addr = serve(server_config(
        vec![node.leaf_der.clone(), ca.cert_der().to_vec()],
        node.keys.tls_key_pem(),
    ))
    .await;
    let config = pinned_ca_client_config(parse_ca_hash(&ca.hash()).unwrap()).unwrap();
    assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    connect(config, addr).await.unwrap();
}

#[tokio::test]
async fn wrong_pin_is_refused_with_a_hash_mismatch() {
    let ca = ClusterCa::generate("test").unwrap();
    let other_ca = ClusterCa::generate("other").unwrap();
    let node = node_signed_by(&ca, 1);
    let addr = serve(server_config(
        vec![node.leaf_der.clone(), ca.cert_der().to_vec()],
        node.keys.tls_key_pem(),
    ))
    .await;

    let pin = parse_ca_hash(&other_ca.hash()).unwrap();
    let (config, verifier) = pinned_ca_client_config_capturing(pin).unwrap();
    let err = connect(config, addr).await.unwrap_err();
    match crypto_error(&err) {
        Some(CryptoError::CaHashMismatch {
            expected,
            presented,
        }) => {
            assert_eq!(expected, &other_ca.hash());
            assert_eq!(presented.len(), 2);
            assert_eq!(presented[1], ca.hash());
        }
        other => panic!("unexpected error {err:?} ({other:?})"),
    }
    let msg = crypto_error(&err).unwrap().to_string();
    assert!(
        msg.contains("did not present the pinned cluster CA"),
        "{msg}"
    );
    assert!(msg.contains(&other_ca.hash()), "{msg}");
    assert!(msg.contains("--ca-hash"), "{msg}");
    assert_eq!(verifier.matched_ca_der(), None);
}

#[tokio::test]
async fn pinned_ca_that_did_not_sign_the_leaf_is_refused() {
    // An attacker who knows the (public) CA certificate sends it along with a leaf signed by
    // its own CA: the pin matches, but the leaf does not chain to the pinned CA.
    let ca = ClusterCa::generate("test").unwrap();
    let evil_ca = ClusterCa::generate("evil").unwrap();
    let evil = node_signed_by(&evil_ca, 1);
    let addr = serve(server_config(
        vec![evil.leaf_der.clone(), ca.cert_der().to_vec()],
        evil.keys.tls_key_pem(),
    ))
    .await;

    let (config, verifier) =
        pinned_ca_client_config_capturing(parse_ca_hash(&ca.hash()).unwrap()).unwrap();
    let err = connect(config, addr).await.unwrap_err();
    let rustls_err = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {err:?}"));
    assert!(
        matches!(
            rustls_err,
            rustls::Error::InvalidCertificate(CertificateError::BadSignature)
                | rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{rustls_err:?}"
    );
    assert_eq!(verifier.matched_ca_der(), None);
}

#[tokio::test]
async fn leaf_without_the_node_server_name_is_refused() {
    // A certificate from the right CA but not a node certificate (no node.membrane SAN).
    let ca = ClusterCa::generate("test").unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        ca.cert_pem(),
        rcgen::KeyPair::from_pem(ca.key_pem()).unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["other.example".to_string()]).unwrap();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let addr = serve(server_config(
        vec![leaf.der().to_vec(), ca.cert_der().to_vec()],
        &key.serialize_pem(),
    ))
    .await;

    let config = pinned_ca_client_config(parse_ca_hash(&ca.hash()).unwrap()).unwrap();
    let err = connect(config, addr).await.unwrap_err();
    let rustls_err = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {err:?}"));
    assert!(
        matches!(
            rustls_err,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
                | rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        ),
        "{rustls_err:?}"
    );
    // The name checked is the node server name, not the IP the client dialled.
    assert_eq!(NODE_SERVER_NAME, "node.membrane");
}

#[tokio::test]
async fn server_sending_only_the_leaf_is_refused() {
    let ca = ClusterCa::generate("test").unwrap();
    let node = node_signed_by(&ca, 1);
    let addr = serve(server_config(
        vec![node.leaf_der.clone()],
        node.keys.tls_key_pem(),
    ))
    .await;
    let config = pinned_ca_client_config(parse_ca_hash(&ca.hash()).unwrap()).unwrap();
    let err = connect(config, addr).await.unwrap_err();
    match crypto_error(&err) {
        Some(CryptoError::CaHashMismatch { presented, .. }) => assert_eq!(presented.len(), 1),
        other => panic!("unexpected error {err:?} ({other:?})"),
    }
}
