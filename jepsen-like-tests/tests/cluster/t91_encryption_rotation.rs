use std::time::Duration;

use membrane_jepsen::traffic::{udp_round_trip, TcpStreamProbe, UdpEchoServer};
use membrane_jepsen::{require_root, Cluster};

use super::support::{encrypt_status, tunnel_drop, wait_keys_ready};

const KEY_DROPS: [&str; 5] = ["auth", "replay", "stale-epoch", "unknown-sender", "no-key"];

fn key_drops(c: &Cluster, nodes: &[usize]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for i in nodes {
        for r in KEY_DROPS {
            let n = tunnel_drop(c, *i, r)?;
            if n > 0 {
                out.push(format!("h{i} {r}={n}"));
            }
        }
    }
    Ok(out)
}

/// 10 rotations while a TCP stream and a ping-pong run across nodes: the stream survives and
/// the key-related drop counters stay 0. Then a node stopped during a rotation and started
/// after it resumes traffic with no manual step.
#[test]
fn t91_rotations_lose_nothing_and_a_node_down_catches_up() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t91", 3)?;
    let a = c.add_endpoint(1, "a", &["app=t91a"])?;
    let b = c.add_endpoint(2, "b", &["app=t91b"])?;
    let d = c.add_endpoint(3, "d", &["app=t91d"])?;
    c.wait_endpoints_listed(&[&a, &b, &d], Duration::from_secs(20))?;
    c.cli(1, &["encrypt", "enable", "--timeout", "60"])?;
    wait_keys_ready(&c, &[1, 2, 3], 1, Duration::from_secs(60))?;
    let echo_a = UdpEchoServer::start(&a.netns, a.ip, 7191)?;
    let echo_d = UdpEchoServer::start(&d.netns, d.ip, 7191)?;
    let stream = TcpStreamProbe::start(&a.netns, a.ip, 7091, &b.netns, Duration::from_secs(10))?;
    stream.wait_for_more(64 * 1024, Duration::from_secs(10))?;

    for round in 1..=10 {
        let s = c.cli_json(1, &["encrypt", "rotate", "--timeout", "60"])?;
        let active = s["active_epoch"].as_u64().unwrap_or(0);
        assert!(active > round, "round {round}: {s}");
        wait_keys_ready(&c, &[1, 2, 3], active, Duration::from_secs(30))?;
        udp_round_trip(&b.netns, echo_a.addr(), Duration::from_secs(5))?;
        stream.wait_for_more(16 * 1024, Duration::from_secs(10))?;
    }
    let drops = key_drops(&c, &[1, 2, 3])?;
    assert!(
        drops.is_empty(),
        "key-related drops during rotations: {drops:?}"
    );
    let stats = stream.finish();
    assert!(
        stats.errors.is_empty(),
        "the stream broke: {:?}",
        stats.errors
    );

    // Node 3 is down while a rotation runs; it is not waited for.
    c.lab().stop(3)?;
    let s = c.cli_json(1, &["encrypt", "rotate", "--timeout", "90"])?;
    let active = s["active_epoch"].as_u64().unwrap_or(0);
    wait_keys_ready(&c, &[1, 2], active, Duration::from_secs(30))?;
    c.lab().restart(3)?;
    c.wait_serving(3)?;
    // It publishes late into the active epoch; everyone installs it; traffic resumes.
    wait_keys_ready(&c, &[1, 2, 3], active, Duration::from_secs(60)).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\nh3: {}\n{}",
            c.log_tail(3),
            encrypt_status(&c, 1).unwrap_or_default()
        )
    })?;
    udp_round_trip(&b.netns, echo_d.addr(), Duration::from_secs(10))?;
    Ok(())
}
