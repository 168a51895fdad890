//! Membrane's gossip: who is in the cluster and who is alive, within seconds.
//!
//! Built on chitchat (scuttlebutt anti-entropy with a phi-accrual failure detector) with a
//! transport of our own, because chitchat authenticates nothing: every UDP datagram is sealed
//! with a key derived from the cluster gossip key and the X25519 keys of its sender and its
//! receiver ([`membrane_crypto::seal`], [`membrane_crypto::pairwise`]) and checked against a replay window
//! ([`membrane_crypto::replay`]) before chitchat sees it. A datagram that fails either check
//! is dropped and counted ([`CountersSnapshot`]). `gossip/ALGORITHM.md` explains the protocol,
//! the packet format and the failure-detector settings.
//!
//! Using it:
//!
//! ```no_run
//! # async fn demo() -> Result<(), membrane_gossip::GossipError> {
//! use membrane_crypto::seal::Keyring;
//! use membrane_gossip::{Gossip, GossipConfig, MemberEvent, NodeMeta, NodeSecret, PeerTable, Peers};
//!
//! let meta = NodeMeta { id: 1, name: "n1".into(), health: "ok".into(), ..Default::default() };
//! let addr = "10.0.0.1:7701".parse().unwrap();
//! let secret = NodeSecret::from_bytes([1; 32]);
//! // The members as the registry lists them: id, X25519 public key, gossip address.
//! let mut members = PeerTable::new();
//! members.insert(2, [9; 32], "10.0.0.2:7701".parse().unwrap());
//! let ring = Keyring::single(1, [7; 32]);
//! let mut config = GossipConfig::new(meta, addr, addr, ring, "prod", secret, Peers::new(members));
//! config.seeds = vec!["10.0.0.2:7701".parse().unwrap()];
//! let gossip = Gossip::start(config).await?;
//! let (members, mut events) = gossip.subscribe_with_snapshot();
//! # let _ = members;
//! while let Ok(event) = events.recv().await {
//!     match event {
//!         MemberEvent::Up(m) | MemberEvent::Changed(m) => println!("{} at {}", m.name, m.rpc_addr),
//!         MemberEvent::Down(m) => println!("{} is down", m.id),
//!     }
//! }
//! gossip.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Modules, one idea each:
//! - [`config`]: what a node needs to start gossiping, and the failure-detector settings.
//! - [`meta`]: what each node publishes about itself, as chitchat key-values.
//! - [`events`]: the membership view by node id and the events derived from its changes.
//! - [`peers`]: the members (id, public key, address) and this node's secret.
//! - [`transport`]: the sealed UDP transport and its packet counters.
//! - [`persist`]: the replay high-water marks on disk.
//! - [`handle`]: the running gossip ([`Gossip`]).

#![deny(missing_docs)]

pub mod config;
mod error;
pub mod events;
pub mod handle;
pub mod meta;
pub mod peers;
pub mod persist;
pub mod transport;

pub use config::GossipConfig;
pub use error::GossipError;
pub use events::{MemberEvent, MemberState, Members};
pub use handle::Gossip;
pub use meta::NodeMeta;
pub use peers::{NodeSecret, PeerTable, Peers};
pub use transport::{Counters, CountersSnapshot, SealedTransport};
