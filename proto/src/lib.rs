//! Wire types of Membrane, generated from `proto/membrane/v1/*.proto`.
//!
//! - `Raft`: openraft RPCs between nodes (mutual TLS).
//! - `Cluster`: join, and registry reads/writes forwarded to the leader (mutual TLS, except
//!   `Join`, which a node calls before it has a certificate).
//! - `Agent`: the local API on the agent's Unix socket, used by the CLI.
//! - `Plugin`: the plugin socket for orchestrators and `membrane-cni` (endpoints).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("membrane.v1");
}
