//! The cluster certificate authority.
//!
//! `membrane init` creates one CA per cluster. It signs every node's TLS certificate when the
//! node is admitted, and every node trusts exactly this CA for node-to-node mutual TLS. A node
//! that joins does not have the CA yet: it pins it by the SHA-256 of the CA certificate's
//! SubjectPublicKeyInfo (the kubeadm `--discovery-token-ca-cert-hash` convention), printed by
//! `membrane init` as `sha256:<64 hex>`; see [`crate::tls::pinned_ca_client_config`].
//!
//! Node certificates carry the DNS name `node-<id>.membrane` ([`node_server_name`]): a member
//! dialling node N verifies that name, so one node's certificate cannot impersonate another.
//! They also carry [`NODE_SERVER_NAME`], verified only by a joining node, which knows an
//! address but not yet which node answers it (and pins the CA instead). The subject common
//! name `node-<id>` and the SPKI hash tell a server which node is calling
//! ([`cert_peer_of_der`]); the server then compares them with the registry.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::CryptoError;

/// The DNS name every node certificate carries, verified only by a joining node's pinned-CA
/// client ([`crate::tls::pinned_ca_client_config`]), which cannot know the node id yet.
/// Members verify [`node_server_name`] instead.
pub const NODE_SERVER_NAME: &str = "node.membrane";

/// Prefix of the textual CA hash.
pub const CA_HASH_PREFIX: &str = "sha256:";

/// How long the cluster CA is valid: long enough that nobody has to rotate it in normal life.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a node certificate is valid. Short, because a certificate cannot be recalled
/// from a machine that was lost; agents renew theirs over mutual TLS when a third is left.
pub const NODE_CERT_VALIDITY: Duration = Duration::days(30);
/// Certificates start slightly in the past so that nodes whose clocks lag accept them at once.
const CLOCK_SKEW: Duration = Duration::minutes(5);
/// Longest cluster name accepted (it becomes part of a 64-byte common name).
const MAX_CLUSTER_NAME_LEN: usize = 48;

/// The cluster CA: its certificate and private key, able to sign node certificates.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: Zeroizing<String>,
    hash: String,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    /// Shows only public facts, so a CA can be logged without leaking its key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("hash", &self.hash())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Creates a new CA for `cluster_name`: ECDSA P-256, CA:TRUE with path length 0 (it signs
    /// node certificates directly, never intermediates), valid for 10 years.
    pub fn generate(cluster_name: &str) -> Result<ClusterCa, CryptoError> {
        validate_cluster_name(cluster_name)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| generation("CA key generation", e))?;

        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "membrane");
        dn.push(DnType::CommonName, format!("membrane CA {cluster_name}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());

        let cert = params
            .self_signed(&key)
            .map_err(|e| generation("CA certificate creation", e))?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem,
            hash: ca_hash_of_cert_der(cert.der())?,
            not_after: params.not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA saved from [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`].
    ///
    /// Checks that the certificate is a CA and that the key belongs to it, so a mix-up of
    /// files is caught here rather than as unverifiable node certificates later.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, CryptoError> {
        let cert_der = single_cert_from_pem(cert_pem)?;
        let bad_cert = |reason: String| CryptoError::InvalidCaCert { reason };
        let (rest, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| bad_cert(format!("cannot parse the certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(bad_cert("trailing bytes after the certificate".into()));
        }
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| bad_cert(format!("bad basic constraints extension: {e}")))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(bad_cert("the certificate is not a CA (no CA:TRUE)".into()));
        }
        let not_after = cert.validity().not_after.to_datetime();
        let spki_der = cert.public_key().raw.to_vec();

        let key = KeyPair::from_pem(key_pem).map_err(|e| CryptoError::InvalidCaKey {
            reason: format!("not a PKCS#8 PEM private key ({e})"),
        })?;
        if key.subject_public_key_info() != spki_der {
            return Err(CryptoError::InvalidCaKey {
                reason: "the key does not belong to the CA certificate".into(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
            .map_err(|e| bad_cert(format!("cannot use it as an issuer: {e}")))?;

        Ok(ClusterCa {
            hash: ca_hash_of_cert_der(&cert_der)?,
            cert_pem: cert_pem.to_string(),
            cert_der,
            key_pem: Zeroizing::new(key_pem.to_string()),
            not_after,
            issuer,
        })
    }

    /// The CA certificate as PEM, to store next to the key and to hand to joining nodes.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key as PKCS#8 PEM, to store (mode 0600) on the nodes that sign.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate as DER, the form rustls root stores take.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// `sha256:<64 hex>` of the CA certificate's SubjectPublicKeyInfo: the value a joining
    /// node passes as `--ca-hash`. It hashes the public key rather than the certificate so
    /// that re-issuing the CA certificate with the same key keeps the hash.
    pub fn hash(&self) -> String {
        self.hash.clone()
    }

    /// Verifies a node's PKCS#10 CSR and issues its certificate, returned as PEM (the leaf
    /// only; servers send `[leaf, CA]`).
    ///
    /// The CSR's signature must verify with its own key, which proves the node holds the key.
    /// Everything the CSR asks for besides the key is ignored: the certificate gets CN
    /// `node-<id>`, DNS names [`NODE_SERVER_NAME`] and `node-<id>.membrane`, key usage
    /// digitalSignature, extended key usages serverAuth and clientAuth, and
    /// [`NODE_CERT_VALIDITY`] (30 days; never past the CA's own expiry).
    pub fn sign_node_csr(&self, csr_der: &[u8], node_id: u64) -> Result<String, CryptoError> {
        let (public_key, _) = verified_csr_key(csr_der)?;

        let now = OffsetDateTime::now_utc();
        let not_after = std::cmp::min(now + NODE_CERT_VALIDITY, self.not_after);
        if not_after <= now {
            return Err(CryptoError::InvalidCaCert {
                reason: format!(
                    "the CA expired on {}; create a new cluster CA before admitting nodes",
                    self.not_after
                ),
            });
        }

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "membrane");
        dn.push(DnType::CommonName, node_common_name(node_id));
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            dns_san(NODE_SERVER_NAME)?,
            dns_san(&node_server_name(node_id))?,
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;

        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| generation("node certificate signing", e))?;
        Ok(cert.pem())
    }
}

/// Hex SHA-256 of the public key (SubjectPublicKeyInfo DER) in a CSR, after checking the
/// CSR's signature and key type exactly as [`ClusterCa::sign_node_csr`] does. Lets a server
/// refuse a bad CSR before it records anything about the node, and fingerprint its key the
/// same way as [`crate::NodeKeys::tls_public_key_sha256`].
pub fn csr_public_key_sha256(csr_der: &[u8]) -> Result<String, CryptoError> {
    let (_, spki_der) = verified_csr_key(csr_der)?;
    Ok(hex::encode(Sha256::digest(&spki_der)))
}

/// Parses a CSR, verifies its signature (proof that the node holds the key) and that the key
/// is P-256; returns the key and its SubjectPublicKeyInfo DER.
fn verified_csr_key(csr_der: &[u8]) -> Result<(rcgen::SubjectPublicKeyInfo, Vec<u8>), CryptoError> {
    let bad = |reason: String| CryptoError::InvalidCsr { reason };
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| bad(format!("cannot parse it as DER PKCS#10: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the request".into()));
    }
    csr.verify_signature()
        .map_err(|_| CryptoError::CsrSignatureInvalid)?;
    let spki_der = csr.certification_request_info.subject_pki.raw.to_vec();
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(&spki_der)
        .map_err(|e| bad(format!("unsupported public key: {e}")))?;
    if public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(bad(
            "the public key is not ECDSA P-256, the only key type node certificates use".into(),
        ));
    }
    Ok((public_key, spki_der))
}

/// `sha256:<64 hex>` of a certificate's SubjectPublicKeyInfo DER; see [`ClusterCa::hash`].
pub fn ca_hash_of_cert_der(der: &[u8]) -> Result<String, CryptoError> {
    Ok(format!(
        "{CA_HASH_PREFIX}{}",
        hex::encode(spki_sha256_of_cert_der(der)?)
    ))
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo DER, as raw bytes.
pub(crate) fn spki_sha256_of_cert_der(der: &[u8]) -> Result<[u8; 32], CryptoError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CryptoError::InvalidCertificate {
            reason: format!("cannot parse DER X.509: {e}"),
        })?;
    Ok(Sha256::digest(cert.public_key().raw).into())
}

/// Parses a CA hash given by an operator. Only `sha256:` followed by exactly 64 hex digits is
/// accepted, because a truncated or differently hashed pin would silently weaken the check.
pub fn parse_ca_hash(s: &str) -> Result<[u8; 32], CryptoError> {
    let bad = |reason: String| CryptoError::InvalidCaHash { reason };
    let Some(hex_part) = s.strip_prefix(CA_HASH_PREFIX) else {
        return Err(match s.split_once(':') {
            Some((alg, _)) => bad(format!(
                "hash algorithm {alg:?} is not supported, only sha256"
            )),
            None => bad(format!("missing the `{CA_HASH_PREFIX}` prefix")),
        });
    };
    if let Some((pos, c)) = hex_part
        .char_indices()
        .find(|(_, c)| !c.is_ascii_hexdigit())
    {
        return Err(bad(format!(
            "character {c:?} at position {} is not a hex digit",
            pos + CA_HASH_PREFIX.len()
        )));
    }
    if hex_part.len() != 64 {
        return Err(bad(format!(
            "{} hex digits after `{CA_HASH_PREFIX}`, expected 64",
            hex_part.len()
        )));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|e| bad(format!("cannot decode hex: {e}")))?;
    Ok(out)
}

/// The node id in a node certificate's subject common name `node-<id>`, or `None` if the
/// certificate does not parse or is not a node certificate. Servers use it to know which node
/// is calling; the certificate must already have been verified against the cluster CA.
pub fn node_id_from_cert_der(der: &[u8]) -> Option<u64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut cns = cert.subject().iter_common_name();
    let cn = cns.next()?.as_str().ok()?;
    if cns.next().is_some() {
        // Two common names: ambiguous, refuse rather than pick one.
        return None;
    }
    let digits = cn.strip_prefix("node-")?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return None;
    }
    digits.parse().ok()
}

/// Whether the certificate `cert_der` carries a valid signature of the CA `ca_der` (the
/// signature only: validity and names are the TLS layer's). During a CA rotation this tells
/// a node whether its certificate is from the new CA yet.
pub fn cert_signed_by(cert_der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        X509Certificate::from_der(cert_der),
        X509Certificate::from_der(ca_der),
    ) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// The DNS name a client verifies when it dials node `node_id`: `node-<id>.membrane`, carried
/// as a subject alternative name by every node certificate since the first release.
pub fn node_server_name(node_id: u64) -> String {
    format!("node-{node_id}.membrane")
}

/// Who a verified node certificate says its holder is: the node id and the SHA-256 of its
/// SubjectPublicKeyInfo (the form `NodeRecord.tls_key_sha256` records at admission).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertPeer {
    /// From the common name `node-<id>`, confirmed by the DNS name `node-<id>.membrane`.
    pub node_id: u64,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo DER.
    pub spki_sha256: [u8; 32],
}

/// Reads the [`CertPeer`] of a node certificate that already chained to the cluster CA.
///
/// The common name must be `node-<id>` and the DNS names must include
/// [`node_server_name`]`(id)`: a certificate whose two names disagree is refused rather than
/// read either way.
pub fn cert_peer_of_der(der: &[u8]) -> Result<CertPeer, CryptoError> {
    let bad = |reason: String| CryptoError::InvalidCertificate { reason };
    let node_id = node_id_from_cert_der(der).ok_or_else(|| {
        bad("its subject common name is not `node-<id>`; it is not a node certificate".into())
    })?;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| bad(format!("cannot parse DER X.509: {e}")))?;
    let want = node_server_name(node_id);
    let names_match = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("bad subject alternative name extension: {e}")))?
        .is_some_and(|san| {
            san.value.general_names.iter().any(
                |n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == want),
            )
        });
    if !names_match {
        return Err(bad(format!(
            "its common name says node {node_id} but its DNS names do not include {want}"
        )));
    }
    Ok(CertPeer {
        node_id,
        spki_sha256: Sha256::digest(cert.public_key().raw).into(),
    })
}

fn node_common_name(node_id: u64) -> String {
    format!("node-{node_id}")
}

fn dns_san(name: &str) -> Result<SanType, CryptoError> {
    let ia5 = name
        .try_into()
        .map_err(|e| generation("subject alternative name", e))?;
    Ok(SanType::DnsName(ia5))
}

/// A random positive 127-bit serial: serials must be unique per issuer, and rcgen's default
/// (a hash of the public key) would repeat when a node renews with the same key.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40;
    SerialNumber::from_slice(&bytes)
}

fn validate_cluster_name(name: &str) -> Result<(), CryptoError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_CLUSTER_NAME_LEN {
        Some("it is longer than 48 bytes")
    } else if name.chars().any(|c| c.is_control()) {
        Some("it contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CryptoError::InvalidClusterName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn single_cert_from_pem(pem: &str) -> Result<Vec<u8>, CryptoError> {
    let bad = |reason: String| CryptoError::InvalidCaCert { reason };
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("cannot read PEM: {e}")))?;
    match certs.as_slice() {
        [one] => Ok(one.to_vec()),
        [] => Err(bad("no CERTIFICATE block in the PEM".into())),
        more => Err(bad(format!(
            "{} CERTIFICATE blocks in the PEM, expected exactly one",
            more.len()
        ))),
    }
}

fn generation(what: &'static str, e: impl std::fmt::Display) -> CryptoError {
    CryptoError::Generation {
        what,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::NodeKeys;
    use x509_parser::extensions::GeneralName;

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs.len(), 1);
        certs[0].to_vec()
    }

    fn node_keys() -> (tempfile::TempDir, NodeKeys) {
        let dir = tempfile::tempdir().unwrap();
        let keys = NodeKeys::load_or_create(dir.path()).unwrap();
        (dir, keys)
    }

    #[test]
    fn generated_ca_is_a_p256_ca_valid_for_ten_years() {
        let ca = ClusterCa::generate("prod-eu").unwrap();
        let (_, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign());
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, "membrane CA prod-eu");
        let v = cert.validity();
        let days = (v.not_after.to_datetime() - v.not_before.to_datetime()).whole_days();
        assert!((3650..=3651).contains(&days), "{days}");
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        // Self-signed.
        cert.verify_signature(None).unwrap();
        assert_eq!(pem_to_der(ca.cert_pem()), ca.cert_der());
        assert!(ca.key_pem().contains("PRIVATE KEY"));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn generate_refuses_bad_cluster_names() {
        assert!(matches!(
            ClusterCa::generate(""),
            Err(CryptoError::InvalidClusterName {
                reason: "it is empty",
                ..
            })
        ));
        assert!(ClusterCa::generate(&"x".repeat(49)).is_err());
        assert!(ClusterCa::generate("a\0b").is_err());
    }

    #[test]
    fn ca_hash_is_sha256_of_spki() {
        let ca = ClusterCa::generate("c").unwrap();
        let (_, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(cert.public_key().raw))
        );
        assert_eq!(ca.hash(), expected);
        assert_eq!(ca.hash().len(), 7 + 64);
        assert_eq!(ca_hash_of_cert_der(ca.cert_der()).unwrap(), expected);
        // Differs from a hash of the whole certificate.
        assert_ne!(
            ca.hash(),
            format!("sha256:{}", hex::encode(Sha256::digest(ca.cert_der())))
        );
        assert_eq!(
            parse_ca_hash(&ca.hash()).unwrap().to_vec(),
            Sha256::digest(cert.public_key().raw).to_vec()
        );
        assert!(matches!(
            ca_hash_of_cert_der(b"not a certificate"),
            Err(CryptoError::InvalidCertificate { .. })
        ));
    }

    #[test]
    fn parse_ca_hash_accepts_only_sha256_and_64_hex() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parse_ca_hash(&good).unwrap(), [0xab; 32]);
        let upper = format!("sha256:{}", "AB".repeat(32));
        assert_eq!(parse_ca_hash(&upper).unwrap(), [0xab; 32]);

        let err = |s: &str| match parse_ca_hash(s) {
            Err(CryptoError::InvalidCaHash { reason }) => reason,
            other => panic!("{s:?}: unexpected {other:?}"),
        };
        assert_eq!(err(&"ab".repeat(32)), "missing the `sha256:` prefix");
        assert_eq!(
            err(&format!("sha1:{}", "ab".repeat(20))),
            "hash algorithm \"sha1\" is not supported, only sha256"
        );
        assert_eq!(
            err(&format!("SHA256:{}", "ab".repeat(32))),
            "hash algorithm \"SHA256\" is not supported, only sha256"
        );
        assert_eq!(err("sha256:"), "0 hex digits after `sha256:`, expected 64");
        assert_eq!(
            err(&format!("sha256:{}", "a".repeat(63))),
            "63 hex digits after `sha256:`, expected 64"
        );
        assert_eq!(
            err(&format!("sha256:{}", "a".repeat(65))),
            "65 hex digits after `sha256:`, expected 64"
        );
        assert_eq!(
            err(&format!("sha256:{}g{}", "a".repeat(10), "a".repeat(53))),
            "character 'g' at position 17 is not a hex digit"
        );
        assert_eq!(
            err(&format!("sha256:{} ", "a".repeat(64))),
            "character ' ' at position 71 is not a hex digit"
        );
        let msg = parse_ca_hash("").unwrap_err().to_string();
        assert!(msg.contains("membrane init"), "{msg}");
    }

    #[test]
    fn cert_signed_by_tells_the_signing_ca() {
        let ca = ClusterCa::generate("c").unwrap();
        let other = ClusterCa::generate("c").unwrap();
        let (_d, keys) = node_keys();
        let der = pem_to_der(&ca.sign_node_csr(&keys.csr_der("n").unwrap(), 3).unwrap());
        assert!(cert_signed_by(&der, ca.cert_der()));
        assert!(
            !cert_signed_by(&der, other.cert_der()),
            "same name, other key"
        );
        assert!(!cert_signed_by(b"junk", ca.cert_der()));
    }

    #[test]
    fn from_pem_round_trips_and_signs_with_the_same_key() {
        let ca = ClusterCa::generate("c").unwrap();
        let loaded = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(loaded.hash(), ca.hash());
        assert_eq!(loaded.cert_der(), ca.cert_der());

        let (_d, keys) = node_keys();
        let pem = loaded
            .sign_node_csr(&keys.csr_der("n").unwrap(), 3)
            .unwrap();
        let der = pem_to_der(&pem);
        let (_, leaf) = X509Certificate::from_der(&der).unwrap();
        let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(leaf.issuer(), ca_cert.subject());
    }

    #[test]
    fn from_pem_refuses_mismatched_or_bad_inputs() {
        let a = ClusterCa::generate("a").unwrap();
        let b = ClusterCa::generate("b").unwrap();
        assert!(matches!(
            ClusterCa::from_pem(a.cert_pem(), b.key_pem()),
            Err(CryptoError::InvalidCaKey { .. })
        ));
        assert!(matches!(
            ClusterCa::from_pem(a.cert_pem(), "garbage"),
            Err(CryptoError::InvalidCaKey { .. })
        ));
        assert!(matches!(
            ClusterCa::from_pem("garbage", a.key_pem()),
            Err(CryptoError::InvalidCaCert { .. })
        ));
        let two = format!("{}{}", a.cert_pem(), b.cert_pem());
        let err = ClusterCa::from_pem(&two, a.key_pem()).unwrap_err();
        assert!(err.to_string().contains("2 CERTIFICATE blocks"), "{err}");

        // A node certificate is not a CA.
        let (_d, keys) = node_keys();
        let leaf = a.sign_node_csr(&keys.csr_der("n").unwrap(), 1).unwrap();
        let err = ClusterCa::from_pem(&leaf, keys.tls_key_pem()).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");
    }

    #[test]
    fn node_certificate_has_the_promised_names_usages_and_validity() {
        let ca = ClusterCa::generate("c").unwrap();
        let (_d, keys) = node_keys();
        let pem = ca
            .sign_node_csr(&keys.csr_der("worker-9").unwrap(), 42)
            .unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let der = pem_to_der(&pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();

        let cns: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cns, vec!["node-42"]);

        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(sans, vec!["node.membrane", "node-42.membrane"]);

        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        assert!(!ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!eku.code_signing && !eku.any);
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);

        let v = cert.validity();
        let days = (v.not_after.to_datetime() - v.not_before.to_datetime()).whole_days();
        assert!((30..=31).contains(&days), "{days}");

        // The certificate is for the node's key.
        let spki = hex::encode(Sha256::digest(cert.public_key().raw));
        assert_eq!(spki, keys.tls_public_key_sha256());

        assert_eq!(node_id_from_cert_der(&der), Some(42));
        assert_eq!(node_id_from_cert_der(ca.cert_der()), None);
    }

    #[test]
    fn cert_peer_names_the_node_and_fingerprints_its_key() {
        let ca = ClusterCa::generate("c").unwrap();
        let (_d, keys) = node_keys();
        let der = pem_to_der(&ca.sign_node_csr(&keys.csr_der("n").unwrap(), 7).unwrap());
        let peer = cert_peer_of_der(&der).unwrap();
        assert_eq!(peer.node_id, 7);
        // The same fingerprint the registry records at admission.
        assert_eq!(hex::encode(peer.spki_sha256), keys.tls_public_key_sha256());
        assert_eq!(node_server_name(7), "node-7.membrane");
    }

    #[test]
    fn cert_peer_refuses_certificates_whose_names_disagree() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = |cn: &str, sans: &[&str]| {
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            params.distinguished_name = dn;
            params.subject_alt_names = sans.iter().map(|s| dns_san(s).unwrap()).collect();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let ok = cert("node-3", &["node.membrane", "node-3.membrane"]);
        assert_eq!(cert_peer_of_der(&ok).unwrap().node_id, 3);
        for (cn, sans) in [
            ("node-3", &["node.membrane", "node-2.membrane"][..]),
            ("node-3", &["node.membrane"][..]),
            ("node-3", &[][..]),
            ("worker", &["node-3.membrane"][..]),
        ] {
            let err = cert_peer_of_der(&cert(cn, sans)).unwrap_err();
            assert!(
                matches!(err, CryptoError::InvalidCertificate { .. }),
                "{cn} {sans:?}: {err}"
            );
        }
        assert!(cert_peer_of_der(b"\x30\x03\x02\x01\x00").is_err());
    }

    #[test]
    fn serials_differ_between_issues_of_the_same_key() {
        let ca = ClusterCa::generate("c").unwrap();
        let (_d, keys) = node_keys();
        let csr = keys.csr_der("n").unwrap();
        let a = pem_to_der(&ca.sign_node_csr(&csr, 1).unwrap());
        let b = pem_to_der(&ca.sign_node_csr(&csr, 1).unwrap());
        let serial = |der: &[u8]| X509Certificate::from_der(der).unwrap().1.serial.clone();
        assert_ne!(serial(&a), serial(&b));
    }

    #[test]
    fn csr_key_fingerprint_matches_the_node_keys() {
        let (_dir, keys) = node_keys();
        let csr = keys.csr_der("n1").unwrap();
        assert_eq!(
            csr_public_key_sha256(&csr).unwrap(),
            keys.tls_public_key_sha256()
        );
        let mut bad = csr.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(csr_public_key_sha256(&bad).is_err());
    }

    #[test]
    fn tampered_csr_signature_is_refused() {
        let ca = ClusterCa::generate("c").unwrap();
        let (_d, keys) = node_keys();
        let mut csr = keys.csr_der("n").unwrap();
        // The signature BIT STRING is the last element; flip a bit in its final byte.
        let last = csr.len() - 1;
        csr[last] ^= 0x01;
        match ca.sign_node_csr(&csr, 1) {
            Err(CryptoError::CsrSignatureInvalid) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn csr_with_tampered_subject_is_refused() {
        let ca = ClusterCa::generate("c").unwrap();
        let (_d, keys) = node_keys();
        let mut csr = keys.csr_der("nodeA").unwrap();
        let pos = csr
            .windows(5)
            .position(|w| w == b"nodeA")
            .expect("CN bytes in the CSR");
        csr[pos + 4] = b'B';
        assert!(matches!(
            ca.sign_node_csr(&csr, 1),
            Err(CryptoError::CsrSignatureInvalid)
        ));
    }

    #[test]
    fn csr_whose_key_was_swapped_is_refused() {
        // A CSR signed by one key but carrying another key's SPKI proves nothing.
        let ca = ClusterCa::generate("c").unwrap();
        let (_d1, k1) = node_keys();
        let (_d2, k2) = node_keys();
        let mut csr = k1.csr_der("n").unwrap();
        let spki1 = KeyPair::from_pem(k1.tls_key_pem())
            .unwrap()
            .subject_public_key_info();
        let spki2 = KeyPair::from_pem(k2.tls_key_pem())
            .unwrap()
            .subject_public_key_info();
        assert_eq!(spki1.len(), spki2.len());
        let pos = csr.windows(spki1.len()).position(|w| w == spki1).unwrap();
        csr[pos..pos + spki2.len()].copy_from_slice(&spki2);
        assert!(matches!(
            ca.sign_node_csr(&csr, 1),
            Err(CryptoError::CsrSignatureInvalid)
        ));
    }

    #[test]
    fn garbage_csr_is_refused_with_a_parse_error() {
        let ca = ClusterCa::generate("c").unwrap();
        assert!(matches!(
            ca.sign_node_csr(b"\x30\x03\x02\x01\x00", 1),
            Err(CryptoError::InvalidCsr { .. })
        ));
        assert!(matches!(
            ca.sign_node_csr(&[], 1),
            Err(CryptoError::InvalidCsr { .. })
        ));
        let (_d, keys) = node_keys();
        let mut csr = keys.csr_der("n").unwrap();
        csr.push(0);
        let err = ca.sign_node_csr(&csr, 1).unwrap_err();
        assert!(err.to_string().contains("trailing bytes"), "{err}");
    }

    #[test]
    fn csr_with_a_non_p256_key_is_refused() {
        let ca = ClusterCa::generate("c").unwrap();
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let csr = CertificateParams::default().serialize_request(&ed).unwrap();
        let err = ca.sign_node_csr(csr.der(), 1).unwrap_err();
        assert!(err.to_string().contains("not ECDSA P-256"), "{err}");
    }

    #[test]
    fn node_id_parsing_accepts_only_canonical_node_names() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert_with_cn = |cn: &str| {
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            params.distinguished_name = dn;
            params.self_signed(&key).unwrap().der().to_vec()
        };
        assert_eq!(node_id_from_cert_der(&cert_with_cn("node-0")), Some(0));
        assert_eq!(node_id_from_cert_der(&cert_with_cn("node-7")), Some(7));
        assert_eq!(
            node_id_from_cert_der(&cert_with_cn("node-18446744073709551615")),
            Some(u64::MAX)
        );
        for bad in [
            "node-",
            "node-+1",
            "node--1",
            "node-01",
            "node-1a",
            "node-18446744073709551616",
            "Node-1",
            "worker-1",
            "node-1 ",
        ] {
            assert_eq!(node_id_from_cert_der(&cert_with_cn(bad)), None, "{bad}");
        }
        assert_eq!(node_id_from_cert_der(b"garbage"), None);
    }
}
