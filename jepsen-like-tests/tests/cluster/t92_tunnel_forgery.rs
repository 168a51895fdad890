use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use membrane_jepsen::{in_netns, ip_in, require_root, Cluster};

use super::support::{tunnel_drop, wait_keys_ready, UnderlayCapture};

const PORT: u16 = 7092;
const ENC_PORT: u16 = 8473;

/// Forged, replayed, truncated, wrong-epoch and unknown-sender packets sent from the underlay
/// namespace to a node's encryption port are dropped and counted under their reason, and none
/// reaches the endpoint.
#[test]
fn t92_bad_tunnel_packets_are_dropped_by_reason() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t92", 2)?;
    let a = c.add_endpoint(1, "a", &["app=t92a"])?;
    let b = c.add_endpoint(2, "b", &["app=t92b"])?;
    c.wait_endpoints_listed(&[&a, &b], Duration::from_secs(20))?;
    c.cli(1, &["encrypt", "enable", "--timeout", "60"])?;
    wait_keys_ready(&c, &[1, 2], 1, Duration::from_secs(60))?;

    // Endpoint a counts every datagram that reaches it.
    let sink = in_netns(&a.netns, || UdpSocket::bind(SocketAddrV4::new(a.ip, PORT)))??;
    sink.set_read_timeout(Some(Duration::from_millis(200)))?;
    let cap = UnderlayCapture::start(c.lab().underlay_netns(), ENC_PORT)?;
    let sender = in_netns(&b.netns, || UdpSocket::bind("0.0.0.0:0"))??;
    let to_a = SocketAddr::from(SocketAddrV4::new(a.ip, PORT));
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    while got == 0 && Instant::now() < deadline {
        sender.send_to(b"T92-REAL", to_a)?;
        if let Ok((n, _)) = sink.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"T92-REAL");
            got += 1;
        }
    }
    assert_eq!(
        got, 1,
        "the real datagram did not arrive through the tunnel"
    );
    std::thread::sleep(Duration::from_millis(200));
    // The sealed datagram h2 sent to h1 (the last one sent before the echo arrived).
    let real = cap
        .lock()
        .udp
        .iter()
        .rev()
        .find(|p| p.len() > 44 && p[0] == 1)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no sealed datagram captured"))?;
    while sink.recv_from(&mut buf).is_ok() {}

    // An attacker on the underlay: an address on the bridge.
    let ul = c.lab().underlay_netns().to_string();
    ip_in(&ul, &["addr", "add", "10.77.0.250/24", "dev", "br0"])?;
    let evil = in_netns(&ul, || UdpSocket::bind("10.77.0.250:0"))??;
    let node1 = match c.lab().host(1).ip() {
        std::net::IpAddr::V4(v4) => SocketAddr::from(SocketAddrV4::new(v4, ENC_PORT)),
        other => anyhow::bail!("host 1 has no IPv4 address: {other}"),
    };
    let before = |r: &str| tunnel_drop(&c, 1, r);
    let base: Vec<(&str, u64)> = [
        "auth",
        "replay",
        "malformed",
        "stale-epoch",
        "unknown-sender",
    ]
    .iter()
    .map(|r| Ok((*r, before(r)?)))
    .collect::<anyhow::Result<_>>()?;

    // A forgery with a counter never used (a seen one is refused earlier, as a replay):
    // the header is authenticated, so the tag no longer matches.
    let mut forged = real.clone();
    let counter = u64::from_be_bytes(forged[20..28].try_into()?);
    forged[20..28].copy_from_slice(&(counter + 1_000_000).to_be_bytes());
    let last = forged.len() - 20;
    forged[last] ^= 0x55;
    let mut wrong_epoch = real.clone();
    wrong_epoch[4..8].copy_from_slice(&999u32.to_be_bytes());
    let mut stranger = real.clone();
    stranger[8..16].copy_from_slice(&4242u64.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("auth", forged),
        ("replay", real.clone()),
        ("malformed", real[..20].to_vec()),
        ("stale-epoch", wrong_epoch),
        ("unknown-sender", stranger),
    ];
    for (_, packet) in &cases {
        for _ in 0..3 {
            evil.send_to(packet, node1)?;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut wrong = Vec::new();
    for (reason, old) in &base {
        let now = tunnel_drop(&c, 1, reason)?;
        if now < old + 3 {
            wrong.push(format!("{reason}: {old} -> {now}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "drops not counted under their reason: {wrong:?}\n{}",
        c.cli(1, &["encrypt", "status"]).unwrap_or_default()
    );
    assert!(
        sink.recv_from(&mut buf).is_err(),
        "a bad packet reached the endpoint: {:?}",
        String::from_utf8_lossy(&buf[..8])
    );
    Ok(())
}
