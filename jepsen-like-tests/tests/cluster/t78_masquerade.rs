use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use membrane_jepsen::traffic::tcp_connect;
use membrane_jepsen::{in_netns, require_root, Cluster};

/// Accepts one connection on `addr` inside `netns` (on a thread) and returns the peer
/// address it came from, or None if none arrives within `wait`.
fn peer_of_one_connection(
    netns: &str,
    addr: SocketAddr,
    wait: Duration,
) -> anyhow::Result<std::thread::JoinHandle<Option<IpAddr>>> {
    let listener = in_netns(netns, move || TcpListener::bind(addr))??;
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            if let Ok((_, peer)) = listener.accept() {
                return Some(peer.ip());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }))
}

/// Traffic from an endpoint to an address outside the pod network is routed by its node
/// and masqueraded behind the node's underlay address; with `--masquerade false` it leaves
/// with the pod address, which the other host cannot answer (it has no route to pods).
#[test]
fn t78_traffic_leaving_the_pod_network_is_masqueraded_unless_disabled() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t78", 2)?;
    let ep = c.add_endpoint(1, "m", &["app=client"])?;
    let h1 = c.lab().host(1).ip();
    let h2 = c.lab().host(2);
    let target = SocketAddr::new(h2.ip(), 9100);
    let seen = peer_of_one_connection(h2.netns(), target, Duration::from_secs(10))?;
    tcp_connect(&ep.netns, target, Duration::from_secs(5))?;
    let peer = seen
        .join()
        .map_err(|_| anyhow::anyhow!("listener thread panicked"))?;
    assert_eq!(
        peer,
        Some(h1),
        "the other host should see the node's address, not the pod's ({})",
        ep.ip
    );
    drop(c);

    let (mut c, _) = Cluster::init("t78b", 2)?;
    c.set_agent_args(&["--masquerade", "false"]);
    c.start_first()?;
    let token = c.create_token(1)?;
    c.join(2, &token)?;
    c.wait_for_voters(2, Duration::from_secs(30))?;
    c.wait_serving(1)?;
    let ep = c.add_endpoint(1, "m", &["app=client"])?;
    let h2 = c.lab().host(2);
    let target = SocketAddr::new(h2.ip(), 9100);
    let seen = peer_of_one_connection(h2.netns(), target, Duration::from_secs(4))?;
    let connected = tcp_connect(&ep.netns, target, Duration::from_secs(3)).is_ok();
    let peer = seen
        .join()
        .map_err(|_| anyhow::anyhow!("listener thread panicked"))?;
    assert!(
        !connected && peer.is_none(),
        "without masquerade the unroutable pod source must not get through (connected {connected}, peer {peer:?})"
    );
    Ok(())
}
