//! Network policy: CiliumNetworkPolicy-shaped rules, and the pure engine that turns them
//! into each local endpoint's policy map.
//!
//! Nothing here does IO. [`parse::parse_policies`] reads a file's text into [`rule::Policy`]
//! documents (or a located error: `file:line:column: field.path: message`);
//! [`engine::compute`] resolves the policies against the cluster's identities for one
//! endpoint into an [`engine::EndpointPolicy`]; [`explain::explain`] says which rule decides
//! a given packet. The agent loads the maps into BPF and the CLI prints; see
//! `docs/policy.md` for the user's reference.
//!
//! # Semantics
//!
//! - An endpoint that no policy selects with a rule in a direction allows everything in
//!   that direction. Once a policy selects it with an `ingress` or `ingressDeny` rule (resp.
//!   `egress`/`egressDeny`), only what some allow rule matches passes: default deny.
//! - Deny wins: a packet that any deny rule matches is dropped, whatever allows it.
//! - Replies of allowed connections always pass: the datapath's connection tracking lets
//!   them through before the policy map is consulted; the map is for new connections.
//! - Entities: `all` is the wildcard identity 0; `host` is 1; `remote-node` is 6;
//!   `cluster` is every cluster identity plus host and remote-node; `world` is 2 plus
//!   every CIDR identity.
//! - CIDRs: every distinct CIDR and except-CIDR of the policies gets a node-local identity
//!   `0x0100_0000 | n` (n from 1 over the sorted list; `0.0.0.0/0` is world, 2) that the
//!   ipcache maps by longest prefix. A CIDR rule matches the CIDR identities inside its
//!   network and inside none of its excepts.
//!
//! # The lookup contract
//!
//! The datapath looks a packet up with (direction, remote identity I, protocol P, port N),
//! where N is the destination port for TCP and UDP and 0 for ICMP and other protocols
//! without ports:
//!
//! 1. It reads the tables (I, P), (I, 0), (0, P), (0, 0), in that order, where a table is
//!    the set of [`engine::PolicyEntry`]s of the direction with that identity and protocol
//!    (0 = any).
//! 2. Within a table, the entry with the longest `port_prefix_len` whose block contains N
//!    matches (an entry with prefix length 0 contains every port).
//! 3. The first table with a match decides: its entry's verdict.
//! 4. No match in any table: Deny if the direction is enforced, else Allow.
//!
//! With one hash lookup per (identity, protocol, prefix length), that is at most
//! 4 × 17 lookups, whatever the number of rules. The engine guarantees that this gives
//! the verdict of a direct evaluation of the rules, deny winning over allow whatever the
//! specificity: it pushes general denies down into the more specific tables that would
//! otherwise hide them (see [`engine`]). [`engine::EndpointPolicy::verdict`] is the
//! reference implementation of the contract.

#![deny(missing_docs)]

pub mod engine;
mod error;
// The agent's policy wing: the desired map state (pure), applying it (IO), the local API.
#[allow(missing_docs)]
pub mod api;
#[allow(missing_docs)]
pub mod apply;
pub mod desired;
pub mod explain;
pub mod parse;
pub mod rule;
pub mod selector;

#[cfg(test)]
mod tests;

pub use engine::{compute, Direction, EndpointPolicy, PolicyEntry, RuleRef, Section, Verdict};
pub use error::{Diagnostic, PolicyError};
pub use explain::{explain, parse_port_proto, Explanation, Peer};
pub use parse::{parse_policies, to_yaml};
pub use rule::Policy;
