//! The eBPF datapath for Membrane. Filled by the datapath issue; see ../../docs/architecture.md.
