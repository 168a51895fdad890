//! `membrane-cni`: a CNI 1.0.0 plugin that forwards to the agent's plugin socket.

fn main() -> std::process::ExitCode {
    membrane::cni::main()
}
