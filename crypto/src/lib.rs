//! Membrane's identity and trust material.
//!
//! - [`keys`]: each node's long-lived keys (ECDSA P-256 for TLS, X25519 for the datapath),
//!   created on first start in the node's state directory.
//! - [`ca`]: the cluster CA made by `membrane init`, which signs node certificates, and the
//!   `sha256:<hex>` CA hash that joining nodes pin.
//! - [`token`]: join tokens `ID.SECRET` (kubeadm's shape), stored in the registry only hashed.
//! - [`seal`], [`pairwise`], [`replay`]: sealed packets (gossip), the keys two nodes share,
//!   and replay windows that survive restarts.
//! - [`tunnel`]: the node-to-node encryption tunnel as pure code (header, key derivation,
//!   RFC 6479 replay window, ChaCha20-Poly1305 via ring or RustCrypto, [`tunnel::Tunnel`]).
//! - [`tls`]: the rustls client configuration a joining node uses to reach the cluster before
//!   it has the CA, trusting only the pinned CA.
//!
//! The join flow these pieces serve: `membrane init` creates a [`ClusterCa`] and a
//! [`JoinToken`] and prints `--token ID.SECRET --ca-hash sha256:HEX`. The new node loads or
//! creates its [`NodeKeys`], connects with [`tls::pinned_ca_client_config`], sends the token
//! and [`NodeKeys::csr_der`]; the cluster checks the token's hash with
//! [`token::hashes_equal`], admits the node through Raft and returns
//! [`ClusterCa::sign_node_csr`]'s certificate.
//!
//! This crate does no network IO; it only reads and writes the node's key files.

#![deny(missing_docs)]

pub mod ca;
pub mod cert_info;
mod error;
pub mod keys;
pub mod pairwise;
pub mod replay;
pub mod seal;
pub mod tls;
pub mod token;
pub mod tunnel;

pub use ca::{ClusterCa, NODE_SERVER_NAME};
pub use error::CryptoError;
pub use keys::NodeKeys;
pub use token::JoinToken;
