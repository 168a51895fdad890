//! The reference system: the same N rules as an iptables chain in a plain namespace on a
//! Linux bridge, loaded atomically with iptables-restore.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context};

use super::other_pairs;
use super::workload::{CONN_PORT, RR_PORT};
use crate::bench::system::{add_bridge, attach};
use crate::netns::nsenter;
use crate::Lab;

/// The chain the iptables variants fill.
const CHAIN: &str = "MEMBRANE-BENCH";
/// The plain bridge's subnet, and where the fabricated peer addresses of the iptables rules
/// live (no such hosts exist: the rules only need to be there to be walked).
pub(super) const PLAIN_NET: [u8; 3] = [10, 212, 0];

/// The fabricated address of peer j for the iptables rules (10.213.0.0/16).
fn peer_ip(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, (j / 250) as u8, (j % 250 + 1) as u8)
}

/// The iptables-restore input: no rules at all for n = 0, else the chain.
pub(super) fn iptables_rules(
    n: usize,
    peers: usize,
    client: Ipv4Addr,
    ct_shortcut: bool,
) -> String {
    let mut r =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    if n > 0 {
        r += &format!(":{CHAIN} - [0:0]\n");
        if ct_shortcut {
            r += "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n";
        }
        // Only what comes from the endpoint's interface, as Membrane's ingress policy.
        r += &format!("-A INPUT -i eth0 -j {CHAIN}\n");
        for (j, port) in other_pairs(n, peers) {
            r += &format!(
                "-A {CHAIN} -s {}/32 -p tcp -m tcp --dport {port} -j ACCEPT\n",
                peer_ip(j)
            );
        }
        for port in [CONN_PORT, RR_PORT] {
            r += &format!("-A {CHAIN} -s {client}/32 -p tcp -m tcp --dport {port} -j ACCEPT\n");
        }
        r += &format!("-A {CHAIN} -j DROP\n");
    }
    r += "COMMIT\n";
    r
}

/// `iptables-restore` (a whole filter table, atomically) in namespace `ns`.
pub(super) fn restore(program: &str, ns: &str, rules: &str) -> anyhow::Result<()> {
    let mut child = nsenter(ns)
        .arg(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// What `program --version` prints, for the report.
pub(super) fn version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Two namespaces on host 1 on a plain Linux bridge (10.212.0.0/24, `mtu`), no BPF; returns
/// (client, server) namespace names.
pub(super) fn plain_bridge(lab: &Lab, mtu: u32) -> anyhow::Result<(String, String)> {
    let h1 = lab.host(1).netns().to_string();
    add_bridge(&h1, "plbr2")?;
    let mut names = Vec::new();
    for (name, host_if, last) in [("pcli", "plvcli", 2), ("psrv", "plvsrv", 3)] {
        let ns = lab.add_endpoint_netns(1, name)?;
        let cidr = format!(
            "{}.{}.{}.{last}/24",
            PLAIN_NET[0], PLAIN_NET[1], PLAIN_NET[2]
        );
        attach(&h1, host_if, "plbr2", &ns, &cidr, mtu)?;
        names.push(ns);
    }
    Ok((names[0].clone(), names[1].clone()))
}
