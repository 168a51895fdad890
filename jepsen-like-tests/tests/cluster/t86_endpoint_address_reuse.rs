//! Issue 12: a deleted endpoint's address, reused by an endpoint of another identity,
//! inherits none of its flows.
//!
//! Node pod CIDRs are /30s (one endpoint each), so when A is deleted the only address its
//! node can give A' is A's own: the pool is full and reuses the address freed longest ago
//! at once, grace period or not. Policy: the server B (h2) takes UDP from app=x only and
//! sends only to app=x. A (app=x, h1) opens a UDP flow to B from a fixed port; B answers on
//! it. Then A is deleted and A' (app=y) gets A's address. Without the conntrack flushes,
//! h2's ingress entry of the old flow lets A''s datagrams on the old 5-tuple reach B as
//! "established", and h1's egress entry of it lets B's datagrams reach A' as "replies";
//! both nodes' maps keep the entries (UDP lives 60 s, and every datagram refreshes it).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use membrane_jepsen::{in_netns, require_root, wait_until, Cluster};
use serde_json::Value;

/// B's port.
const SERVER_PORT: u16 = 7301;
/// A's (and then A''s) source port: the old flow's 5-tuple is reused exactly.
const CLIENT_PORT: u16 = 40_123;

const POLICY: &str = r#"apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {name: server}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: x}}]
      toPorts: [{ports: [{port: "7301", protocol: UDP}]}]
  egress:
    - toEndpoints: [{matchLabels: {app: x}}]
"#;

/// One conntrack key as the datapath holds it (`struct ct_key`, 16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ct {
    saddr: Ipv4Addr,
    daddr: Ipv4Addr,
    sport: u16,
    dport: u16,
    proto: u8,
    direction: u8,
}

/// The conntrack map of a node, read from its pin with bpftool (what the kernel holds).
fn conntrack(pin_dir: &Path) -> anyhow::Result<Vec<Ct>> {
    let pin = pin_dir.join("conntrack");
    let out = Command::new("bpftool")
        .arg("-j")
        .args(["map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .context("cannot run bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool map dump {}: {}",
            pin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    let entries = v
        .as_array()
        .ok_or_else(|| anyhow!("bpftool printed no array: {v}"))?;
    entries
        .iter()
        .map(|e| {
            let bytes: Vec<u8> = e["key"]
                .as_array()
                .ok_or_else(|| anyhow!("an entry without a key: {e}"))?
                .iter()
                .map(|b| {
                    let s = b.as_str().unwrap_or_default();
                    u8::from_str_radix(s.trim_start_matches("0x"), 16)
                        .map_err(|err| anyhow!("key byte {b}: {err}"))
                })
                .collect::<anyhow::Result<_>>()?;
            anyhow::ensure!(
                bytes.len() == 16,
                "a conntrack key of {} bytes",
                bytes.len()
            );
            Ok(Ct {
                saddr: Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]),
                daddr: Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]),
                sport: u16::from_be_bytes([bytes[8], bytes[9]]),
                dport: u16::from_be_bytes([bytes[10], bytes[11]]),
                proto: bytes[12],
                direction: bytes[13],
            })
        })
        .collect()
}

/// The entries of a node that name `addr` (source or destination).
fn naming(c: &Cluster, host: usize, addr: Ipv4Addr) -> anyhow::Result<Vec<Ct>> {
    Ok(conntrack(c.lab().host(host).bpf_pin_dir())?
        .into_iter()
        .filter(|k| k.saddr == addr || k.daddr == addr)
        .collect())
}

/// A UDP socket bound to `port` inside `netns`, with a short read timeout.
fn socket(netns: &str, ip: Ipv4Addr, port: u16) -> anyhow::Result<UdpSocket> {
    let bind = SocketAddr::V4(SocketAddrV4::new(ip, port));
    let sock = in_netns(netns, move || UdpSocket::bind(bind))?
        .with_context(|| format!("cannot bind UDP {bind} in {netns}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(sock)
}

/// Sends `msg` from `from` to `to` every 200 ms for `window` and returns what `recv` got
/// meanwhile (datagrams with their senders).
fn send_for(
    from: &UdpSocket,
    to: SocketAddr,
    recv: &UdpSocket,
    msg: &[u8],
    window: Duration,
) -> anyhow::Result<Vec<(SocketAddr, Vec<u8>)>> {
    let end = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    while Instant::now() < end {
        from.send_to(msg, to).context("send")?;
        while let Ok((n, peer)) = recv.recv_from(&mut buf) {
            got.push((peer, buf[..n].to_vec()));
        }
    }
    Ok(got)
}

/// The identity h`host`'s ipcache holds for `addr`/32, 0 when none.
fn ipcache_identity(c: &Cluster, host: usize, addr: Ipv4Addr) -> anyhow::Result<u64> {
    let cidr = format!("{addr}/32");
    Ok(c.bpf_ipcache(host)?
        .iter()
        .find(|e| e["cidr"] == cidr.as_str())
        .and_then(|e| e["identity"].as_u64())
        .unwrap_or(0))
}

#[test]
fn t86_a_reused_address_inherits_no_flow() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start_with("t86", 2, &["--node-cidr-size", "30"])?;
    c.policy_apply(POLICY)?;
    // Other holders keep identity X alive after A goes (as other pods of A's kind would).
    // Otherwise X is released with A, B's policy no longer selects it, and the policy
    // sync cuts h2's entry of the old flow for that reason alone.
    c.cli(1, &["identity", "allocate", "app=x"])?;
    let a = c.add_endpoint(1, "a", &["app=x"])?;
    let b = c.add_endpoint(2, "b", &["app=server"])?;
    c.wait_endpoints_listed(&[&a, &b], Duration::from_secs(20))?;
    let server = SocketAddr::from((b.ip, SERVER_PORT));
    let client = SocketAddr::from((a.ip, CLIENT_PORT));

    // The old flow: A -> B from the fixed port, B answering on it.
    let b_sock = socket(&b.netns, b.ip, SERVER_PORT)?;
    {
        let a_sock = socket(&a.netns, Ipv4Addr::UNSPECIFIED, CLIENT_PORT)?;
        wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
            let got = send_for(&a_sock, server, &b_sock, b"x", Duration::from_millis(400))?;
            Ok(got.iter().any(|(peer, _)| *peer == client))
        })
        .map_err(|e| anyhow!("A never reached B: {e:#}\nh2: {}", c.log_tail(2)))?;
        let got = send_for(
            &b_sock,
            client,
            &a_sock,
            b"reply",
            Duration::from_millis(600),
        )?;
        anyhow::ensure!(
            got.iter().any(|(peer, m)| *peer == server && m == b"reply"),
            "B's replies did not reach A: {got:?}"
        );
    }
    let old_flow = |k: &Ct| {
        k.proto == 17
            && ((k.saddr, k.sport, k.daddr, k.dport) == (a.ip, CLIENT_PORT, b.ip, SERVER_PORT)
                || (k.saddr, k.sport, k.daddr, k.dport) == (b.ip, SERVER_PORT, a.ip, CLIENT_PORT))
    };
    // The flow is tracked on both nodes (A's egress on h1, B's ingress on h2), so their
    // absence later means something.
    for host in [1, 2] {
        let held = naming(&c, host, a.ip)?;
        anyhow::ensure!(
            held.iter().any(old_flow),
            "h{host} does not track the old flow: {held:?}"
        );
    }
    let old_identity = ipcache_identity(&c, 2, a.ip)?;
    anyhow::ensure!(old_identity != 0, "h2 has no ipcache entry for A");

    // A goes; A' (another identity) comes, on the same node, and gets A's address.
    c.del_endpoint(&a)?;
    c.lab().delete_endpoint_netns(&a.netns)?;
    let a2 = c.add_endpoint(1, "a2", &["app=y"])?;
    assert_eq!(
        a2.ip, a.ip,
        "a /30 pool must hand out the freed address again"
    );
    c.wait_endpoints_listed(&[&a2, &b], Duration::from_secs(20))?;
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let id = ipcache_identity(&c, 2, a.ip)?;
        Ok(id != 0 && id != old_identity)
    })
    .map_err(|e| anyhow!("h2's ipcache never took A''s identity: {e:#}"))?;

    // Neither node holds an entry of the old flow any more, before A' sends anything.
    for host in [1, 2] {
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            Ok(!naming(&c, host, a.ip)?.iter().any(old_flow))
        })
        .map_err(|e| {
            anyhow!(
                "h{host} still tracks the deleted endpoint's flow: {e:#}; entries: {:?}\nlog: {}",
                naming(&c, host, a.ip),
                c.log_tail(host)
            )
        })?;
    }

    let a2_sock = socket(&a2.netns, Ipv4Addr::UNSPECIFIED, CLIENT_PORT)?;
    // B "answers" on the old tuple first: its egress (app=x only) and no reply entry stop it.
    let got = send_for(
        &b_sock,
        client,
        &a2_sock,
        b"stale reply",
        Duration::from_secs(2),
    )?;
    anyhow::ensure!(
        got.is_empty(),
        "A' got B's datagrams on the old flow: {got:?}"
    );
    // A' sends on the old tuple: B's ingress (app=x only) drops it, nothing is established.
    let got = send_for(&a2_sock, server, &b_sock, b"y", Duration::from_secs(2))?;
    anyhow::ensure!(
        got.is_empty(),
        "B got A''s datagrams on the old flow: {got:?}"
    );
    // A' opened an egress entry of its own on h1; h2 made none for it (denied packets make
    // no entry), so B's side of the old flow stays gone.
    let h2 = naming(&c, 2, a.ip)?;
    anyhow::ensure!(
        !h2.iter().any(old_flow),
        "h2 tracks the old tuple again after A' sent: {h2:?}"
    );
    Ok(())
}
