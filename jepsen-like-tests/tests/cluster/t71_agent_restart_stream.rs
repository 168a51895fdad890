use std::time::Duration;

use membrane_jepsen::endpoint::{check_pair, EchoServers, Proto};
use membrane_jepsen::traffic::TcpStreamProbe;
use membrane_jepsen::{require_root, Cluster};

/// A stall longer than this during a restart means the datapath went away with the agent.
const MAX_STALL: Duration = Duration::from_secs(2);

/// Programs stay attached and maps pinned while an agent restarts: a TCP stream between
/// endpoints on two nodes keeps flowing, without a reset, while either node's agent restarts,
/// and the restarted agent lists its endpoints as ready again.
#[test]
fn t71_a_stream_survives_either_agent_restarting() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t71", 3)?;
    let client = c.add_endpoint(1, "cl", &["app=client"])?;
    let server = c.add_endpoint(2, "sv", &["app=server"])?;
    c.wait_endpoints_listed(&[&client, &server], Duration::from_secs(20))?;
    // The first packets of a cross-node flow may wait for ipcache sync; start once it works.
    {
        let _s = EchoServers::start(&[&server])?;
        check_pair(&client, &server, Proto::Tcp, Duration::from_secs(10))?;
    }
    let stream = TcpStreamProbe::start(
        &server.netns,
        server.ip,
        7100,
        &client.netns,
        Duration::from_secs(5),
    )?;
    stream.wait_for_more(256 * 1024, Duration::from_secs(10))?;

    for host in [1, 2] {
        let before = stream.stats();
        c.restart_agent(host)?;
        stream
            .wait_for_more(512 * 1024, Duration::from_secs(10))
            .map_err(|e| {
                anyhow::anyhow!("after restarting h{host}: {e:#}; log: {}", c.log_tail(host))
            })?;
        let after = stream.stats();
        assert!(
            after.errors.is_empty(),
            "h{host} restart: {:?}",
            after.errors
        );
        assert!(after.received > before.received);
        c.wait_endpoints_listed(&[&client, &server], Duration::from_secs(30))
            .map_err(|e| {
                anyhow::anyhow!("after restarting h{host}: {e:#}; log: {}", c.log_tail(host))
            })?;
    }
    let end = stream.finish();
    assert!(end.errors.is_empty(), "{:?}", end.errors);
    assert_eq!(end.received, end.sent, "bytes lost: {end:?}");
    assert!(
        end.longest_stall < MAX_STALL,
        "the stream stalled for {:?} (bound {MAX_STALL:?})",
        end.longest_stall
    );
    // New connections work too.
    let _s = EchoServers::start(&[&server, &client])?;
    check_pair(&client, &server, Proto::Tcp, Duration::from_secs(10))?;
    check_pair(&server, &client, Proto::Udp, Duration::from_secs(10))?;
    Ok(())
}
