//! CNI plugin (filled in by the CNI work).
pub fn main() -> std::process::ExitCode { std::process::ExitCode::FAILURE }
