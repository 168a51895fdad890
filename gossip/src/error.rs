//! The one error type of this crate.

use std::net::SocketAddr;

/// Why gossip could not start or act. Messages say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GossipError {
    /// The configuration cannot work; nothing was started.
    #[error("invalid gossip configuration: {0}")]
    InvalidConfig(String),
    /// The socket could not be opened (address in use, not local, no permission...).
    #[error("cannot start gossip on {addr}: {reason}; check that the address is local and the UDP port free")]
    Start {
        /// The listen address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
}
