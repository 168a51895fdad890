//! Benchmarks that need a lab: each compares Membrane with a reference system side by side,
//! in one run, on the same namespaces and disk.

pub mod datapath;
pub mod policy;
pub mod registry;
pub mod stats;
