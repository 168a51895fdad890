//! Membrane's gossip: who is in the cluster and who is alive, within seconds.
//!
//! Built on chitchat (scuttlebutt anti-entropy with a phi-accrual failure detector), with a
//! transport of our own, because chitchat authenticates nothing: every UDP packet is sealed
//! with the cluster gossip key ([`membrane_crypto::seal`]) and checked against a replay
//! window ([`membrane_crypto::replay`]) before chitchat sees it. A packet that fails either
//! check is dropped and counted. See ALGORITHM.md for the protocol and its settings.
//!
//! - [`transport`]: the sealed UDP transport and its counters.
//! - [`meta`]: what each node publishes about itself.
//! - [`member`]: the running membership ([`Gossip`]) and its events.

pub mod member;
pub mod meta;
pub mod transport;

pub use member::{Gossip, GossipConfig, GossipError, MemberEvent, MemberState};
pub use meta::NodeMeta;
pub use transport::{Counters, CountersSnapshot, SealedTransport};
