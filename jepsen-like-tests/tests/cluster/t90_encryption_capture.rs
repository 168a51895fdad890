use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use membrane_jepsen::traffic::{tcp_connect, TcpEchoServer, UdpEchoServer};
use membrane_jepsen::{in_netns, require_root, Cluster};

use super::support::{wait_keys_ready, UnderlayCapture};

const PORT: u16 = 7090;

/// Sends `marker` over TCP and UDP from `from_ns` to echo servers at `tcp` and `udp` and
/// checks it comes back (so the capture has had its chance to see it).
fn send_marker(
    from_ns: &str,
    tcp: SocketAddr,
    udp: SocketAddr,
    marker: &[u8],
) -> anyhow::Result<()> {
    let mut conn = tcp_connect(from_ns, tcp, Duration::from_secs(10))?;
    conn.write_all(marker)?;
    let mut back = vec![0u8; marker.len()];
    conn.read_exact(&mut back)?;
    anyhow::ensure!(back == marker, "tcp echo differs");
    let sock = in_netns(from_ns, || UdpSocket::bind("0.0.0.0:0"))??;
    sock.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut buf = [0u8; 2048];
    for _ in 0..30 {
        sock.send_to(marker, udp)?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            anyhow::ensure!(&buf[..n] == marker, "udp echo differs");
            return Ok(());
        }
    }
    anyhow::bail!("no udp echo from {udp}")
}

/// An underlay capture during TCP and UDP between endpoints on two nodes: a payload marker is
/// seen in clear with encryption off (so the capture works), and never with it on.
#[test]
fn t90_no_payload_in_clear_on_the_underlay_with_encryption_on() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t90", 2)?;
    let a = c.add_endpoint(1, "a", &["app=t90a"])?;
    let b = c.add_endpoint(2, "b", &["app=t90b"])?;
    c.wait_endpoints_listed(&[&a, &b], Duration::from_secs(20))?;
    let tcp = TcpEchoServer::start(&a.netns, a.ip, PORT)?;
    let udp = UdpEchoServer::start(&a.netns, a.ip, PORT)?;
    let cap = UnderlayCapture::start(c.lab().underlay_netns(), 8473)?;

    let clear = b"T90-MARKER-IN-CLEAR-4f1d".to_vec();
    cap.watch(&clear);
    send_marker(&b.netns, tcp.addr(), udp.addr(), &clear)?;
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        cap.seen(&clear) > 0,
        "with encryption off the marker must be visible (else this test cannot fail); frames seen: {}",
        cap.lock().frames
    );

    c.cli(1, &["encrypt", "enable", "--timeout", "60"])?;
    wait_keys_ready(&c, &[1, 2], 1, Duration::from_secs(60))?;
    let sealed = b"T90-MARKER-SEALED-9a7c".to_vec();
    cap.watch(&sealed);
    for _ in 0..5 {
        send_marker(&b.netns, tcp.addr(), udp.addr(), &sealed)
            .map_err(|e| anyhow::anyhow!("{e:#}\nh1: {}\nh2: {}", c.log_tail(1), c.log_tail(2)))?;
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        cap.seen(&sealed),
        0,
        "the marker crossed the underlay in clear"
    );
    assert!(
        !cap.lock().udp.is_empty(),
        "no sealed datagram to the encryption port was seen: the traffic did not go through the tunnel"
    );
    Ok(())
}
