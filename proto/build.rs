//! Compiles the .proto files with protox (pure Rust), so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/membrane/v1/raft.proto",
        "proto/membrane/v1/cluster.proto",
        "proto/membrane/v1/plugin.proto",
        "proto/membrane/v1/agent.proto",
        "proto/membrane/v1/ca.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
