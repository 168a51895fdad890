//! `cargo run --release -p membrane-gossip --example gossip-bench [-- 10 50 100]`: the same
//! benchmark as `cargo bench -p membrane-gossip`; see benches/gossip-bench.rs.

include!("../benches/gossip-bench.rs");
