//! Benchmarks that need a lab: each compares Membrane with a reference system side by side,
//! in one run, on the same namespaces and disk.
//!
//! Each benchmark module has its flags (`Args`, parsed by `membrane-lab bench NAME`) and a
//! `run`; what they share lives in `stats` (summaries and medians), `system` (tools on PATH,
//! bridges, veths, MTUs) and `flags` (value parsers).

pub mod datapath;
mod flags;
pub mod policy;
pub mod registry;
pub mod stats;
mod system;
pub mod tunnel;
