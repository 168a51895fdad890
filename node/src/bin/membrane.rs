//! `membrane`: the agent and its command-line interface in one binary.

fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    membrane::cli::main()
}
