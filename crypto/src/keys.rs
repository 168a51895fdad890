//! Per-node keypairs, created on a node's first start and kept in its state directory.
//!
//! Two keys, for two jobs:
//! - `tls.key`: an ECDSA P-256 key (PKCS#8 PEM) for the node's TLS certificate, used by every
//!   node-to-node gRPC connection (mutual TLS).
//! - `x25519.key`: an X25519 static secret (written as 64 hex digits; 32 raw bytes are also
//!   accepted) from which the datapath derives pairwise tunnel keys.
//!
//! The public halves are published in the registry when the node joins, so losing or replacing
//! either key changes the node's identity: a key file that exists but cannot be used is an
//! error the operator must resolve, never something this module overwrites. Files are created
//! with mode 0600 in a 0700 directory, written to a temporary file and renamed into place so
//! that a crash never leaves a half-written key behind.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::CryptoError;

/// File name of the TLS private key inside the state directory.
pub const TLS_KEY_FILE: &str = "tls.key";
/// File name of the X25519 static secret inside the state directory.
pub const X25519_KEY_FILE: &str = "x25519.key";

/// Longest node name accepted in a CSR (the X.520 upper bound for a common name).
const MAX_NODE_NAME_LEN: usize = 64;

/// The node's long-lived keys. The secret halves never leave this struct except through
/// [`NodeKeys::tls_key_pem`] (to build the node's own TLS configuration) and
/// [`NodeKeys::x25519_secret`] (to derive tunnel keys); both are wiped from memory on drop.
pub struct NodeKeys {
    tls_key: KeyPair,
    tls_key_pem: Zeroizing<String>,
    x25519: StaticSecret,
}

impl std::fmt::Debug for NodeKeys {
    /// Shows only public material, so keys can be logged without leaking.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field("tls_public_key_sha256", &self.tls_public_key_sha256())
            .field("x25519_public", &hex::encode(self.x25519_public()))
            .finish_non_exhaustive()
    }
}

impl NodeKeys {
    /// Loads the node's keys from `dir`, creating the directory (mode 0700) and any key that
    /// does not exist yet (mode 0600).
    ///
    /// A key file that exists but is unreadable, corrupt, of the wrong length or type, or
    /// readable by group or others gives an error naming the file; it is never replaced,
    /// because the registry already knows its public half.
    pub fn load_or_create(dir: &Path) -> Result<NodeKeys, CryptoError> {
        ensure_dir(dir)?;

        let tls_path = dir.join(TLS_KEY_FILE);
        let (tls_key, tls_key_pem) = match read_key_file(&tls_path)? {
            Some(bytes) => {
                let pem = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    corrupt(
                        &tls_path,
                        "not UTF-8 text, expected a PKCS#8 PEM private key",
                    )
                })?;
                let key = parse_tls_key(&pem).map_err(|reason| corrupt(&tls_path, &reason))?;
                (key, Zeroizing::new(pem))
            }
            None => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| generation("TLS key generation", e))?;
                let pem = Zeroizing::new(key.serialize_pem());
                write_key_file(&tls_path, pem.as_bytes())?;
                (key, pem)
            }
        };

        let x_path = dir.join(X25519_KEY_FILE);
        let x25519 = match read_key_file(&x_path)? {
            Some(bytes) => {
                let raw = parse_x25519(&bytes).map_err(|reason| corrupt(&x_path, &reason))?;
                StaticSecret::from(*raw)
            }
            None => {
                let secret = StaticSecret::random_from_rng(rand::rngs::OsRng);
                let mut text = Zeroizing::new(hex::encode(secret.as_bytes()));
                text.push('\n');
                write_key_file(&x_path, text.as_bytes())?;
                secret
            }
        };

        Ok(NodeKeys {
            tls_key,
            tls_key_pem,
            x25519,
        })
    }

    /// The TLS private key as PKCS#8 PEM, to build this node's rustls configurations.
    pub fn tls_key_pem(&self) -> &str {
        &self.tls_key_pem
    }

    /// The X25519 public key, published in the registry so peers can derive tunnel keys.
    pub fn x25519_public(&self) -> [u8; 32] {
        PublicKey::from(&self.x25519).to_bytes()
    }

    /// The X25519 static secret, for the datapath's pairwise key derivation.
    pub fn x25519_secret(&self) -> &StaticSecret {
        &self.x25519
    }

    /// Hex SHA-256 of the TLS key's SubjectPublicKeyInfo DER: a short fingerprint of the
    /// node's TLS identity for the registry and for logs.
    pub fn tls_public_key_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.tls_key.subject_public_key_info()))
    }

    /// A PKCS#10 certificate signing request for the TLS key, with `node_name` as common name.
    ///
    /// The CA ignores the requested names and issues `node-<id>`; the name only helps an
    /// operator recognise the request. The CSR is signed by the key, which proves possession.
    pub fn csr_der(&self, node_name: &str) -> Result<Vec<u8>, CryptoError> {
        validate_node_name(node_name)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_name);
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&self.tls_key)
            .map_err(|e| generation("CSR creation", e))?;
        Ok(csr.der().to_vec())
    }
}

fn validate_node_name(name: &str) -> Result<(), CryptoError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NODE_NAME_LEN {
        Some("it is longer than 64 bytes")
    } else if name.chars().any(|c| c.is_control()) {
        Some("it contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CryptoError::InvalidNodeName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn generation(what: &'static str, e: impl std::fmt::Display) -> CryptoError {
    CryptoError::Generation {
        what,
        reason: e.to_string(),
    }
}

fn corrupt(path: &Path, reason: &str) -> CryptoError {
    CryptoError::KeyFileCorrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Parses a PEM private key and insists on ECDSA P-256, the only TLS key type nodes use.
fn parse_tls_key(pem: &str) -> Result<KeyPair, String> {
    let key = KeyPair::from_pem(pem).map_err(|e| format!("not a PKCS#8 PEM private key ({e})"))?;
    if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(format!(
            "holds a {:?} key, expected ECDSA P-256",
            key.algorithm()
        ));
    }
    Ok(key)
}

/// Accepts exactly 32 raw bytes, or 64 hex digits with optional surrounding whitespace.
fn parse_x25519(bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
    let mut out = Zeroizing::new([0u8; 32]);
    if bytes.len() == 32 {
        out.copy_from_slice(bytes);
        return Ok(out);
    }
    let text = bytes.trim_ascii();
    if text.len() != 64 {
        return Err(format!(
            "holds {} bytes, expected 32 raw bytes or 64 hex digits",
            bytes.len()
        ));
    }
    hex::decode_to_slice(text, &mut out[..])
        .map_err(|_| "holds 64 characters that are not all hex digits".to_string())?;
    Ok(out)
}

fn ensure_dir(dir: &Path) -> Result<(), CryptoError> {
    let res = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    res.map_err(|source| CryptoError::KeyDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let meta = fs::metadata(dir).map_err(|source| CryptoError::KeyDir {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(CryptoError::KeyDir {
            path: dir.to_path_buf(),
            source: std::io::Error::other("it exists and is not a directory"),
        });
    }
    Ok(())
}

/// Reads a key file, `None` if it does not exist. Refuses files that are not regular files or
/// that group or others may read.
fn read_key_file(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, CryptoError> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CryptoError::KeyFileRead {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_file() {
        return Err(corrupt(path, "it is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::KeyFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = fs::read(path).map_err(|source| CryptoError::KeyFileRead {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Some(Zeroizing::new(bytes)))
}

/// Writes `content` to `path` atomically: a 0600 temporary file in the same directory,
/// fsync, rename, fsync of the directory.
fn write_key_file(path: &Path, content: &[u8]) -> Result<(), CryptoError> {
    let write_err = |source| CryptoError::KeyFileWrite {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The mode passed to open is filtered by the umask, which can only remove bits;
        // set it explicitly anyway so the intent does not depend on that.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(content)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce: u64 = rand::random();
    path.with_file_name(format!(".{name}.tmp-{}-{nonce:016x}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_keys_with_private_modes_and_reloads_the_same_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state").join("node");
        let keys = NodeKeys::load_or_create(&dir).unwrap();

        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&dir.join(TLS_KEY_FILE)), 0o600);
        assert_eq!(mode_of(&dir.join(X25519_KEY_FILE)), 0o600);
        assert!(keys
            .tls_key_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(keys.tls_public_key_sha256().len(), 64);

        let again = NodeKeys::load_or_create(&dir).unwrap();
        assert_eq!(again.tls_key_pem(), keys.tls_key_pem());
        assert_eq!(again.tls_public_key_sha256(), keys.tls_public_key_sha256());
        assert_eq!(again.x25519_public(), keys.x25519_public());

        // No temporary files are left behind.
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![TLS_KEY_FILE.to_string(), X25519_KEY_FILE.to_string()]
        );
    }

    #[test]
    fn x25519_file_is_hex_and_matches_public_key() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = NodeKeys::load_or_create(tmp.path()).unwrap();
        let text = fs::read_to_string(tmp.path().join(X25519_KEY_FILE)).unwrap();
        let raw: [u8; 32] = hex::decode(text.trim()).unwrap().try_into().unwrap();
        let public = PublicKey::from(&StaticSecret::from(raw)).to_bytes();
        assert_eq!(public, keys.x25519_public());
        assert_ne!(public, [0u8; 32]);
    }

    #[test]
    fn accepts_raw_32_byte_x25519_file() {
        let tmp = tempfile::tempdir().unwrap();
        let raw = [7u8; 32];
        let path = tmp.path().join(X25519_KEY_FILE);
        write_key_file(&path, &raw).unwrap();
        let keys = NodeKeys::load_or_create(tmp.path()).unwrap();
        assert_eq!(
            keys.x25519_public(),
            PublicKey::from(&StaticSecret::from(raw)).to_bytes()
        );
        // The existing file was not rewritten.
        assert_eq!(fs::read(&path).unwrap(), raw.to_vec());
    }

    #[test]
    fn tls_fingerprint_is_sha256_of_spki() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = NodeKeys::load_or_create(tmp.path()).unwrap();
        let kp = KeyPair::from_pem(keys.tls_key_pem()).unwrap();
        let expected = hex::encode(Sha256::digest(kp.subject_public_key_info()));
        assert_eq!(keys.tls_public_key_sha256(), expected);
        // And the SPKI is what x509-parser sees as a P-256 EC key.
        let spki = kp.subject_public_key_info();
        let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).unwrap();
        assert_eq!(
            parsed.algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
    }

    #[test]
    fn corrupt_tls_key_is_an_error_naming_the_file_and_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(TLS_KEY_FILE);
        write_key_file(&path, b"-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
        let err = NodeKeys::load_or_create(tmp.path()).unwrap_err();
        assert!(matches!(err, CryptoError::KeyFileCorrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("tls.key"), "{msg}");
        assert!(msg.contains("restore it"), "{msg}");
        assert!(msg.contains("remove it"), "{msg}");
        assert_eq!(
            fs::read(&path).unwrap(),
            b"-----BEGIN PRIVATE KEY-----\ngarbage\n".to_vec()
        );
        assert!(!tmp.path().join(X25519_KEY_FILE).exists());
    }

    #[test]
    fn tls_key_of_wrong_type_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        write_key_file(
            &tmp.path().join(TLS_KEY_FILE),
            ed.serialize_pem().as_bytes(),
        )
        .unwrap();
        let err = NodeKeys::load_or_create(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("expected ECDSA P-256"), "{err}");
    }

    #[test]
    fn wrong_length_x25519_key_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        NodeKeys::load_or_create(tmp.path()).unwrap();
        let path = tmp.path().join(X25519_KEY_FILE);
        fs::write(&path, [1u8; 31]).unwrap();
        let err = NodeKeys::load_or_create(tmp.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CryptoError::KeyFileCorrupt { .. }), "{err:?}");
        assert!(msg.contains("x25519.key"), "{msg}");
        assert!(msg.contains("holds 31 bytes"), "{msg}");
        assert_eq!(fs::read(&path).unwrap(), vec![1u8; 31]);
    }

    #[test]
    fn non_hex_x25519_key_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        write_key_file(
            &tmp.path().join(X25519_KEY_FILE),
            "zz".repeat(32).as_bytes(),
        )
        .unwrap();
        let err = NodeKeys::load_or_create(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("not all hex digits"), "{err}");
    }

    #[test]
    fn group_or_world_readable_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        NodeKeys::load_or_create(tmp.path()).unwrap();
        let path = tmp.path().join(X25519_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKeys::load_or_create(tmp.path()).unwrap_err();
        match &err {
            CryptoError::KeyFilePermissions { path: p, mode } => {
                assert_eq!(p, &path);
                assert_eq!(*mode, 0o644);
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("chmod 600"), "{err}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            NodeKeys::load_or_create(tmp.path()),
            Err(CryptoError::KeyFilePermissions { mode: 0o640, .. })
        ));
    }

    #[test]
    fn directory_in_place_of_key_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory in place of the key file.
        fs::create_dir(tmp.path().join(TLS_KEY_FILE)).unwrap();
        fs::set_permissions(
            tmp.path().join(TLS_KEY_FILE),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let err = NodeKeys::load_or_create(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn missing_key_is_created_next_to_an_existing_one() {
        let tmp = tempfile::tempdir().unwrap();
        let first = NodeKeys::load_or_create(tmp.path()).unwrap();
        fs::remove_file(tmp.path().join(X25519_KEY_FILE)).unwrap();
        let second = NodeKeys::load_or_create(tmp.path()).unwrap();
        assert_eq!(second.tls_key_pem(), first.tls_key_pem());
        assert_ne!(second.x25519_public(), first.x25519_public());
    }

    #[test]
    fn csr_is_signed_by_the_tls_key_and_names_the_node() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = NodeKeys::load_or_create(tmp.path()).unwrap();
        let der = keys.csr_der("worker-1").unwrap();
        let (rest, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        assert!(rest.is_empty());
        csr.verify_signature().unwrap();
        let cn: Vec<_> = csr
            .certification_request_info
            .subject
            .iter_common_name()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cn, vec!["worker-1".to_string()]);
        let spki_hash = hex::encode(Sha256::digest(
            csr.certification_request_info.subject_pki.raw,
        ));
        assert_eq!(spki_hash, keys.tls_public_key_sha256());
    }

    #[test]
    fn csr_refuses_bad_node_names() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = NodeKeys::load_or_create(tmp.path()).unwrap();
        assert!(matches!(
            keys.csr_der(""),
            Err(CryptoError::InvalidNodeName {
                reason: "it is empty",
                ..
            })
        ));
        assert!(keys.csr_der(&"a".repeat(65)).is_err());
        assert!(keys.csr_der("a\nb").is_err());
        assert!(keys.csr_der(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn debug_does_not_print_secrets() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = NodeKeys::load_or_create(tmp.path()).unwrap();
        let dbg = format!("{keys:?}");
        assert!(!dbg.contains("PRIVATE KEY"));
        assert!(!dbg.contains(&hex::encode(keys.x25519_secret().as_bytes())));
        assert!(dbg.contains(&keys.tls_public_key_sha256()));
    }
}
