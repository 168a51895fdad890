//! TLS configuration for a node that joins before it has the cluster CA.
//!
//! A joining node knows only an address, a token and the CA hash the operator copied from
//! `membrane init`. It connects with [`pinned_ca_client_config`]: the server must present a
//! chain `[leaf, CA]` in which some certificate's public key hashes to the pin, and the leaf
//! must verify against that certificate as the only trust anchor, for [`NODE_SERVER_NAME`].
//! This is the kubeadm discovery scheme: trust on first use is replaced by a pin obtained out
//! of band, so a machine in the middle cannot impersonate the cluster. The node presents no
//! client certificate yet, since it has none; it proves itself with the join token.
//!
//! All configurations use the ring provider explicitly, never a process-wide default, so this
//! crate behaves the same whatever other crates install.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};

use crate::ca::{spki_sha256_of_cert_der, NODE_SERVER_NAME};
use crate::CryptoError;

/// The ALPN protocol node-to-node connections speak (gRPC over HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider every configuration of this crate uses: rustls' ring provider.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that trusts only the CA pinned by `ca_hash` (the SHA-256 of the CA
/// certificate's SubjectPublicKeyInfo, see [`crate::ca::parse_ca_hash`]).
///
/// The server certificate is verified for [`NODE_SERVER_NAME`] whatever name the caller
/// connects with, because a joining node usually only has an IP address. TLS 1.3 only, ALPN
/// `h2`, no client certificate.
pub fn pinned_ca_client_config(ca_hash: [u8; 32]) -> Result<ClientConfig, CryptoError> {
    pinned_ca_client_config_capturing(ca_hash).map(|(config, _)| config)
}

/// Like [`pinned_ca_client_config`], also returning the verifier so the caller can learn, after
/// a successful handshake, which CA certificate matched the pin
/// ([`PinnedCaVerifier::matched_ca_der`]) and store it as its trust anchor.
pub fn pinned_ca_client_config_capturing(
    ca_hash: [u8; 32],
) -> Result<(ClientConfig, Arc<PinnedCaVerifier>), CryptoError> {
    let provider = crypto_provider();
    let verifier = Arc::new(PinnedCaVerifier::new(ca_hash, provider.clone()));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CryptoError::TlsConfig {
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok((config, verifier))
}

/// A [`ServerCertVerifier`] that accepts a server only if it presents the pinned CA and its
/// leaf chains to that CA for [`NODE_SERVER_NAME`].
///
/// A mismatch is reported as `rustls::Error::InvalidCertificate(CertificateError::Other(_))`
/// wrapping [`CryptoError::CaHashMismatch`], which names the expected and presented hashes.
pub struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    matched_ca: Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedCaVerifier")
            .field("pin", &format!("sha256:{}", hex::encode(self.pin)))
            .finish_non_exhaustive()
    }
}

impl PinnedCaVerifier {
    /// A verifier for the CA whose SubjectPublicKeyInfo hashes to `pin`.
    pub fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> PinnedCaVerifier {
        PinnedCaVerifier {
            pin,
            provider,
            matched_ca: Mutex::new(None),
        }
    }

    /// The DER of the CA certificate that matched the pin in the last successful verification,
    /// `None` before any.
    pub fn matched_ca_der(&self) -> Option<Vec<u8>> {
        self.matched_ca
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<Vec<u8>, rustls::Error> {
        let mut presented = Vec::new();
        let mut pinned = None;
        for cert in std::iter::once(end_entity).chain(intermediates) {
            let hash = spki_sha256_of_cert_der(cert)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            if hash == self.pin {
                pinned = Some(cert);
                break;
            }
            presented.push(format!("sha256:{}", hex::encode(hash)));
        }
        let Some(ca) = pinned else {
            return Err(other(CryptoError::CaHashMismatch {
                expected: format!("sha256:{}", hex::encode(self.pin)),
                presented,
            }));
        };

        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| {
            other(CryptoError::InvalidCertificate {
                reason: format!("the certificate matching the CA pin is not a usable CA: {e}"),
            })
        })?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = ServerName::try_from(NODE_SERVER_NAME)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)?;
        Ok(ca.to_vec())
    }
}

/// Finds this crate's error inside an error returned by a failed connection, so the caller can
/// show the operator our message (for example which CA hashes the server presented) instead of
/// rustls' generic "invalid peer certificate".
///
/// Looks through `std::io::Error` wrappers (tokio-rustls) and `source()` chains (hyper,
/// tonic) for a `rustls::Error` carrying a [`CryptoError`].
pub fn find_crypto_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CryptoError> {
    let mut current = err;
    loop {
        if let Some(ours) = current.downcast_ref::<CryptoError>() {
            return Some(ours);
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
            current.downcast_ref::<rustls::Error>()
        {
            return other.0.downcast_ref::<CryptoError>();
        }
        // io::Error::source() skips the wrapped error itself, so unwrap it by hand.
        if let Some(inner) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            current = inner;
            continue;
        }
        current = current.source()?;
    }
}

fn other(e: CryptoError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = self.check(end_entity, intermediates, ocsp_response, now)?;
        *self
            .matched_ca
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(ca);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
