use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use membrane_jepsen::{in_netns, require_root, wait_until, Cluster};

/// The gossip port: the RPC port + 1 in the lab.
const GOSSIP_PORT: u16 = 7701;

/// Captures one gossip packet arriving at this namespace's eth0 for `dst` (raw AF_PACKET
/// socket; it sees outgoing packets too, which are skipped: replaying a node's own packet
/// to itself proves nothing).
fn capture_gossip_packet(dst: std::net::Ipv4Addr, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    let fd = socket(
        AddressFamily::Packet,
        SockType::Datagram,
        SockFlag::empty(),
        SockProtocol::EthAll,
    )?;
    let tv = nix::sys::time::TimeVal::new(0, 200_000);
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let n = match nix::sys::socket::recv(
            fd.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            Ok(n) => n,
            Err(_) => continue,
        };
        let p = &buf[..n];
        if n < 28 || p[0] >> 4 != 4 || p[9] != 17 {
            continue;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        if n < ihl + 8 {
            continue;
        }
        let dport = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
        if dport == GOSSIP_PORT && p[16..20] == dst.octets() {
            return Ok(p[ihl + 8..].to_vec());
        }
    }
    anyhow::bail!("no gossip packet seen in {timeout:?}")
}

fn counters(c: &Cluster, host: usize) -> anyhow::Result<serde_json::Value> {
    Ok(c.status(host)?["gossip"].clone())
}

/// Forged, replayed and truncated gossip packets change nothing, raise the counters, and
/// the agent keeps running.
#[test]
fn t61_forged_replayed_and_truncated_gossip_is_dropped_and_counted() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("inject", 3)?;
    let target: SocketAddr = SocketAddr::new(c.lab().host(2).ip(), GOSSIP_PORT);
    c.wait_all_alive(Duration::from_secs(10))?;
    let nodes_before = c.cli_json(2, &["node", "list"])?;
    let before = counters(&c, 2)?;

    let std::net::IpAddr::V4(h2_ip) = c.lab().host(2).ip() else {
        anyhow::bail!("lab hosts are IPv4")
    };
    let real = in_netns(c.lab().host(2).netns(), move || {
        capture_gossip_packet(h2_ip, Duration::from_secs(5))
    })??;
    assert!(real.len() > 40, "a sealed packet has a header and a tag");

    in_netns(c.lab().host(3).netns(), move || -> anyhow::Result<()> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        // Forged: right length, random content; and a real packet with one bit flipped.
        for k in 0..50u8 {
            let junk: Vec<u8> = (0..real.len())
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(k))
                .collect();
            sock.send_to(&junk, target)?;
        }
        let mut flipped = real.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        sock.send_to(&flipped, target)?;
        // Replayed: the captured packet, again and again.
        for _ in 0..5 {
            sock.send_to(&real, target)?;
        }
        // Truncated.
        for len in [0usize, 1, 5, 20] {
            sock.send_to(&real[..len.min(real.len())], target)?;
        }
        Ok(())
    })??;

    wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
        let after = counters(&c, 2)?;
        let rose = |k: &str| after[k].as_u64().unwrap_or(0) > before[k].as_u64().unwrap_or(0);
        Ok(rose("dropped_forged") && rose("dropped_replay") && rose("dropped_truncated"))
    })?;
    let after = counters(&c, 2)?;
    let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    // Junk whose header names a key we do not hold counts as "unknown key" instead.
    assert!(
        delta("dropped_forged") + delta("dropped_unknown_key") >= 51,
        "{after}"
    );
    assert!(delta("dropped_replay") >= 5, "{after}");
    assert!(delta("dropped_truncated") >= 3, "{after}");

    assert!(c.lab().is_running(2)?);
    let nodes_after = c.cli_json(2, &["node", "list"])?;
    assert_eq!(
        nodes_after, nodes_before,
        "injected packets changed what node 2 knows"
    );
    c.cli(2, &["identity", "allocate", "app=after-injection"])?;
    Ok(())
}
