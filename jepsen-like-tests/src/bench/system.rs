//! What the benchmarks need from the machine: programs on PATH, and the plain kernel
//! plumbing (bridges, veths, MTUs) that their reference setups are built from.

use std::path::PathBuf;

use anyhow::anyhow;
use serde_json::Value;

use crate::ip_in;

/// Where `program` is on PATH; a benchmark checks its reference tools before it builds a
/// lab, so a missing one fails at once and by name.
pub fn which(program: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{program} not found on PATH"))
}

/// The MTU of `dev` in namespace `ns`: the baselines take the one of Membrane's endpoints,
/// so that both sides move the same packets.
pub fn link_mtu(ns: &str, dev: &str) -> anyhow::Result<u32> {
    let v: Value = serde_json::from_str(&ip_in(ns, &["-j", "link", "show", dev])?)?;
    v[0]["mtu"]
        .as_u64()
        .map(|m| m as u32)
        .ok_or_else(|| anyhow!("no MTU for {dev} in {ns}"))
}

/// A plain Linux bridge `name`, up, in namespace `ns`.
pub fn add_bridge(ns: &str, name: &str) -> anyhow::Result<()> {
    ip_in(ns, &["link", "add", name, "type", "bridge"])?;
    ip_in(ns, &["link", "set", name, "up"])?;
    Ok(())
}

/// A veth from host namespace `host_ns` (`host_if`, enslaved to `bridge`) to `eth0` in
/// `ns` with `cidr`, both ends at `mtu`.
pub fn attach(
    host_ns: &str,
    host_if: &str,
    bridge: &str,
    ns: &str,
    cidr: &str,
    mtu: u32,
) -> anyhow::Result<()> {
    let mtu = mtu.to_string();
    ip_in(
        host_ns,
        &[
            "link", "add", host_if, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
            &mtu, "netns", ns,
        ],
    )?;
    ip_in(host_ns, &["link", "set", host_if, "master", bridge, "up"])?;
    ip_in(ns, &["addr", "add", cidr, "dev", "eth0"])?;
    ip_in(ns, &["link", "set", "eth0", "up"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_finds_a_program_and_names_a_missing_one() {
        assert!(which("sh").is_ok_and(|p| p.ends_with("sh")));
        let err = which("no-such-program-here").unwrap_err().to_string();
        assert!(err.contains("no-such-program-here"), "{err}");
    }
}
