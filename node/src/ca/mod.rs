//! The cluster CA on this node (issue 11): the CA private key lives only on voters, in
//! their state directories, never in the replicated registry; node certificates are renewed
//! over mutual TLS before they expire.
//!
//! - `custody`: the key file (`keys/ca.key`): load, store after checking, delete; what the
//!   join service signs with ([`CaCustody::ca`]).
//! - `plan` (pure): what to do with the key given this node's Raft role and the registry:
//!   take it (from a registry written before issue 11, or from a voter), delete it, move it
//!   out of the registry, scrub it from the Raft storage.
//! - `renewal` (pure): when a certificate is due.
//! - `scrub`: finding a private key in the Raft storage files, and rewriting the database.
//! - `run`: the custody and renewal loops, and the in-place restart that puts a renewed
//!   certificate to use.
//! - `bundle` (pure): `tls/ca.crt` as the list of trusted CAs, the signing one first.
//! - `rotation_plan` (pure) and `rotation`: `membrane ca rotate`, phase by phase (see
//!   `membrane_consensus::registry` `ca_rotation`).
//! - `api`: `membrane node certs`, `membrane node renew-cert`.
//!
//! The RPCs between nodes are in `rpc/ca_service.rs`.

pub mod api;
pub mod bundle;
pub mod custody;
pub mod plan;
pub mod renewal;
pub mod rotation;
pub mod rotation_plan;
pub mod run;
pub mod scrub;

pub use custody::CaCustody;
