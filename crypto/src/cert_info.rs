//! What a registry records about a node certificate, read from the certificate itself.

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::error::CryptoError;

/// A certificate's serial, validity and key fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lower-case hex without leading zero bytes (at least one digit).
    pub serial_hex: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// Hex SHA-256 of the SubjectPublicKeyInfo DER, as [`crate::ca::csr_public_key_sha256`].
    pub spki_sha256_hex: String,
}

/// Reads a certificate given as DER.
pub fn cert_info_from_der(der: &[u8]) -> Result<CertInfo, CryptoError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CryptoError::InvalidCertificate {
            reason: format!("cannot parse DER X.509: {e}"),
        })?;
    let serial = cert.tbs_certificate.raw_serial();
    let trimmed: Vec<u8> = serial.iter().copied().skip_while(|b| *b == 0).collect();
    let serial_hex = if trimmed.is_empty() {
        "0".to_string()
    } else {
        hex::encode(trimmed)
    };
    let validity = cert.validity();
    Ok(CertInfo {
        serial_hex,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        spki_sha256_hex: hex::encode(crate::ca::spki_sha256_of_cert_der(der)?),
    })
}

/// Reads the first certificate of a PEM text.
pub fn cert_info_from_pem(pem: &str) -> Result<CertInfo, CryptoError> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    let der = rustls_pemfile::certs(&mut reader)
        .next()
        .ok_or_else(|| CryptoError::InvalidCertificate {
            reason: "no CERTIFICATE block in the PEM text".into(),
        })?
        .map_err(|e| CryptoError::InvalidCertificate {
            reason: format!("unreadable PEM: {e}"),
        })?;
    cert_info_from_der(&der)
}

/// Hex SHA-256 of a certificate's public key (SubjectPublicKeyInfo DER), comparable with
/// the `tls_key_sha256` a registry records from the node's CSR.
pub fn cert_public_key_sha256(der: &[u8]) -> Result<String, CryptoError> {
    Ok(hex::encode(crate::ca::spki_sha256_of_cert_der(der)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{csr_public_key_sha256, ClusterCa};
    use crate::keys::NodeKeys;

    #[test]
    fn t10_reads_what_the_ca_signed() {
        let ca = ClusterCa::generate("test").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let keys = NodeKeys::load_or_create(dir.path()).unwrap();
        let csr = keys.csr_der("n1").unwrap();
        let pem = ca.sign_node_csr(&csr, 7).unwrap();
        let info = cert_info_from_pem(&pem).unwrap();
        assert_eq!(info.spki_sha256_hex, csr_public_key_sha256(&csr).unwrap());
        assert!(info.not_after > info.not_before);
        assert!(!info.serial_hex.is_empty() && info.serial_hex.len() <= 40);
        assert!(info
            .serial_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        // A second certificate gets another serial.
        let again = cert_info_from_pem(&ca.sign_node_csr(&csr, 7).unwrap()).unwrap();
        assert_ne!(again.serial_hex, info.serial_hex);
    }

    #[test]
    fn t20_garbage_is_refused() {
        assert!(cert_info_from_pem("not pem").is_err());
        assert!(cert_info_from_der(b"\x30\x03\x02\x01\x01").is_err());
    }
}
