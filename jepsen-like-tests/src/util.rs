//! Small helpers every lab test needs: the agent binary, root, and polling.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

/// The `membrane` binary the lab runs.
///
/// Looked up, first hit wins: `$MEMBRANE_BIN`; `$CARGO_TARGET_DIR/debug/membrane`; the
/// profile dir of the running test binary (`<target>/debug/deps/x` -> `<target>/debug`), which
/// is right whenever the test and the agent were built by the same cargo invocation; and
/// `<workspace>/target/debug/membrane`. The lab tests the binary as shipped, so it is never
/// built from here: build it with `cargo build -p membrane` first.
pub fn membrane_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("MEMBRANE_BIN") {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        bail!("MEMBRANE_BIN={} does not exist", bin.display());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        let dir = if dir.is_absolute() {
            dir
        } else {
            workspace.join(dir)
        };
        candidates.push(dir.join("debug").join("membrane"));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile) = exe
            .parent()
            .filter(|d| d.ends_with("deps"))
            .and_then(Path::parent)
        {
            candidates.push(profile.join("membrane"));
        }
    }
    candidates.push(workspace.join("target").join("debug").join("membrane"));
    if let Some(hit) = candidates.iter().find(|c| c.is_file()) {
        return Ok(hit.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(anyhow!(
        "the membrane binary was not found (tried {}); build it with `cargo build -p membrane` \
         first, or point MEMBRANE_BIN at it",
        tried.join(", ")
    ))
}

/// The `membrane-cni` binary: `$MEMBRANE_CNI_BIN`, else next to [`membrane_binary`] (cargo
/// builds both into the same profile dir with `cargo build -p membrane --bins`).
pub fn cni_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("MEMBRANE_CNI_BIN") {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        bail!("MEMBRANE_CNI_BIN={} does not exist", bin.display());
    }
    let membrane = membrane_binary()?;
    let bin = membrane.with_file_name("membrane-cni");
    if bin.is_file() {
        Ok(bin)
    } else {
        bail!(
            "{} was not found next to {}; build both with `cargo build -p membrane --bins`",
            bin.display(),
            membrane.display()
        )
    }
}

/// Fails unless the process runs as root, which namespaces, veths and nftables need.
///
/// Lab tests call this first and propagate the error: a lab test that silently passes when it
/// could not run would hide a broken CI, so there is deliberately no skip.
pub fn require_root() -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        bail!(
            "lab tests need root (network namespaces, veth pairs, nftables); \
             run them as root, e.g. `sudo -E cargo test -p membrane-jepsen`"
        )
    }
}

/// Polls `check` every `poll` until it returns `Ok(true)`, for at most `timeout`.
///
/// `check` returning an error is an observation, not a failure: agents refuse connections
/// while they start. On timeout the error carries the last observation (the last error, or
/// that the condition was still false), which is usually the clue to why.
pub fn wait_until<F>(timeout: Duration, poll: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> anyhow::Result<bool>,
{
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match check() {
            Ok(true) => return Ok(()),
            Ok(false) => "the condition was still false".to_string(),
            Err(e) => format!("the last check failed: {e:#}"),
        };
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} ({attempts} checks): {last}");
        }
        std::thread::sleep(poll.min(timeout.saturating_sub(start.elapsed())));
    }
}
