//! Gossip membership for Membrane. Filled by the gossip issue; see ../../docs/architecture.md.
