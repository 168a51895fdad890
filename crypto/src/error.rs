//! The one error type of this crate.
//!
//! Every message says what was wrong and, where the operator can act, what to do about it.
//! Messages never contain secret material (token secrets, private keys).

use std::path::PathBuf;

/// Everything that can go wrong with node keys, the cluster CA, node certificates, join
/// tokens and the pinned-CA TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The node's state directory could not be created or inspected.
    #[error(
        "cannot create or open the key directory {path}: {source}; check that the parent \
         directory exists and that the agent may write to it"
    )]
    KeyDir {
        /// The directory.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },

    /// A key file exists but could not be read.
    #[error(
        "cannot read key file {path}: {source}; restore it from a backup, or remove it so a new \
         key is created (the node must then rejoin the cluster)"
    )]
    KeyFileRead {
        /// The key file.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },

    /// A key file exists but does not hold a valid key. It is never overwritten silently.
    #[error(
        "key file {path} is corrupt: {reason}; restore it from a backup, or remove it so a new \
         key is created (the node must then rejoin the cluster)"
    )]
    KeyFileCorrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its content.
        reason: String,
    },

    /// A key file may be read by other users, so the key must be assumed leaked or about to be.
    #[error(
        "key file {path} has mode {mode:04o} and is readable by group or others; run \
         `chmod 600 {path}` if nobody else could have read it, otherwise remove it and rejoin \
         the node with a new key"
    )]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// A key file could not be written.
    #[error(
        "cannot write key file {path}: {source}; check free space and that the agent may write \
         to the directory"
    )]
    KeyFileWrite {
        /// The key file.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },

    /// Creating a key pair, a CSR or a certificate failed inside the crypto library.
    #[error("{what} failed: {reason}")]
    Generation {
        /// What was being produced.
        what: &'static str,
        /// The library's message.
        reason: String,
    },

    /// A node name given for a CSR is not usable as a certificate subject.
    #[error("invalid node name {name:?}: {reason}")]
    InvalidNodeName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A cluster name given to `membrane init` is not usable as a certificate subject.
    #[error("invalid cluster name {name:?}: {reason}")]
    InvalidClusterName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The cluster CA certificate could not be loaded.
    #[error(
        "invalid cluster CA certificate: {reason}; restore the CA files written by \
         `membrane init`"
    )]
    InvalidCaCert {
        /// What is wrong with it.
        reason: String,
    },

    /// The cluster CA private key could not be loaded or does not belong to the certificate.
    #[error(
        "invalid cluster CA private key: {reason}; restore the CA files written by \
         `membrane init`"
    )]
    InvalidCaKey {
        /// What is wrong with it.
        reason: String,
    },

    /// A CA hash given on the command line or in configuration is malformed.
    #[error(
        "invalid CA hash: {reason}; expected `sha256:` followed by 64 hex digits, as printed \
         by `membrane init`"
    )]
    InvalidCaHash {
        /// What is malformed.
        reason: String,
    },

    /// A certificate signing request could not be parsed or is not acceptable.
    #[error("invalid certificate signing request: {reason}")]
    InvalidCsr {
        /// What is wrong with it.
        reason: String,
    },

    /// A certificate signing request is not signed by the key it contains, so the requester
    /// has not proved it holds that key.
    #[error(
        "the certificate signing request's signature does not verify with the key it carries; \
         the request was corrupted or forged and is refused"
    )]
    CsrSignatureInvalid,

    /// A certificate could not be parsed.
    #[error("invalid certificate: {reason}")]
    InvalidCertificate {
        /// What is wrong with it.
        reason: String,
    },

    /// A join token is malformed.
    #[error(
        "invalid join token: {reason}; a token looks like `abcdef.0123456789abcdef` (6 and 16 \
         lowercase letters or digits joined by a dot), as printed by `membrane init` or \
         `membrane token create`"
    )]
    InvalidToken {
        /// Exactly what is malformed (never the secret itself).
        reason: String,
    },

    /// The server's certificate chain does not contain the CA the joining node pinned.
    #[error(
        "the server did not present the pinned cluster CA: expected a CA whose public key \
         hashes to {expected}, the server presented {presented:?}; check the \
         --ca-hash value and that --join points at a node of the intended cluster"
    )]
    CaHashMismatch {
        /// `sha256:<hex>` of the pin.
        expected: String,
        /// `sha256:<hex>` of every certificate the server presented.
        presented: Vec<String>,
    },

    /// A TLS configuration could not be built.
    #[error("cannot build TLS configuration: {reason}")]
    TlsConfig {
        /// What rustls reported.
        reason: String,
    },
}
