//! The sealed transport under attack, over real UDP on loopback: forged, replayed, truncated
//! and foreign packets change nothing and are counted; strangers are never admitted; key
//! rotation keeps the cluster converged.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use membrane_crypto::seal::{Keyring, HEADER_LEN};
use membrane_gossip::{CountersSnapshot, Gossip, MemberEvent, MemberState, Peers};
use tokio::net::UdpSocket;

/// A tap on loopback: forwards `client`'s datagrams to `server` and the server's answers back,
/// keeping a copy of every datagram the client sent, as a wire-sniffing attacker would.
async fn tap(
    client: SocketAddr,
    server: SocketAddr,
) -> (
    SocketAddr,
    Arc<Mutex<Vec<Vec<u8>>>>,
    tokio::task::JoinHandle<()>,
) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("tap socket");
    let addr = sock.local_addr().expect("tap address");
    let captured: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let copy = captured.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if from == client {
                copy.lock().expect("capture").push(buf[..n].to_vec());
                let _ = sock.send_to(&buf[..n], server).await;
            } else if from == server {
                let _ = sock.send_to(&buf[..n], client).await;
            }
        }
    });
    (addr, captured, task)
}

fn delta(before: CountersSnapshot, after: CountersSnapshot) -> CountersSnapshot {
    CountersSnapshot {
        sent: after.sent - before.sent,
        send_failed: after.send_failed - before.send_failed,
        received: after.received - before.received,
        dropped_truncated: after.dropped_truncated - before.dropped_truncated,
        dropped_unknown_version: after.dropped_unknown_version - before.dropped_unknown_version,
        dropped_unknown_key: after.dropped_unknown_key - before.dropped_unknown_key,
        dropped_forged: after.dropped_forged - before.dropped_forged,
        dropped_replay: after.dropped_replay - before.dropped_replay,
        dropped_malformed: after.dropped_malformed - before.dropped_malformed,
        dropped_unknown_sender: after.dropped_unknown_sender - before.dropped_unknown_sender,
        dropped_future_epoch: after.dropped_future_epoch - before.dropped_future_epoch,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_forged_replayed_and_truncated_packets_change_nothing_and_are_counted() {
    let (mut nodes, addrs) = cluster(3).await;
    // Node 4 knows only the tap, which relays it to node 1 and records what it sends: node 4
    // seals for node 1 at the tap's address, node 1 answers node 4 there.
    let a4 = free_addr();
    let (tap_addr, captured, tap_task) = tap(a4, addrs[0]).await;
    register(4, a4);
    members().update(|t| t.alias(tap_addr, 4));
    let mut view4 = members().with(|t| t.clone());
    view4.alias(tap_addr, 1);
    nodes.push(
        Gossip::start(config(4, a4, &[tap_addr], ring(), Peers::new(view4)))
            .await
            .expect("gossip starts"),
    );
    converge(&nodes).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recorded: Vec<Vec<u8>> = captured.lock().expect("capture").clone();
    assert!(!recorded.is_empty(), "the tap saw nothing");

    let n1 = &nodes[0];
    let members_before = n1.members();
    let mut rx = n1.subscribe();
    let before = n1.counters();
    let raw = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("attacker socket");
    let to = addrs[0];
    let genuine = &recorded[recorded.len() - 1];
    // Replays of everything node 4 sent to node 1 through the tap, all already accepted.
    for p in &recorded {
        raw.send_to(p, to).await.expect("send");
    }
    // One forged bit in each part of a genuine packet: sender, epoch, counter, body, tag.
    // A flipped sender names a node that is not a member: unknown sender, not even opened.
    let mut forged = 0u64;
    for i in [5, 13, 21, HEADER_LEN, genuine.len() - 1] {
        let mut p = genuine.clone();
        p[i] ^= 0x40;
        raw.send_to(&p, to).await.expect("send");
        forged += u64::from(i != 5);
    }
    // Sealed with the right key id but other key bytes: an outsider guessing.
    raw.send_to(
        &Keyring::single(1, [8; 32])
            .seal(4, 1, 1, b"x")
            .expect("seal"),
        to,
    )
    .await
    .expect("send");
    forged += 1;
    // Truncated (twice), unknown version, unknown key id.
    raw.send_to(&genuine[..HEADER_LEN], to).await.expect("send");
    raw.send_to(&[], to).await.expect("send");
    let mut v2 = genuine.clone();
    v2[0] = 2;
    raw.send_to(&v2, to).await.expect("send");
    let mut k9 = genuine.clone();
    k9[1..5].copy_from_slice(&9u32.to_be_bytes());
    raw.send_to(&k9, to).await.expect("send");
    // Authentic (a member, 77, with a bug) but not chitchat.
    register(77, free_addr());
    let pair_77_1 = ring()
        .pairwise(&secret(77).0, 77, &secret(1).public(), 1)
        .expect("pair keyring");
    raw.send_to(
        &pair_77_1
            .seal(77, 1, 1, b"not a chitchat message")
            .expect("seal"),
        to,
    )
    .await
    .expect("send");
    // Sealed with the cluster key by a non-member (a removed node, say): unknown sender.
    raw.send_to(&ring().seal(78, 1, 1, b"x").expect("seal"), to)
        .await
        .expect("send");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = delta(before, n1.counters());
    assert_eq!(d.dropped_replay, recorded.len() as u64, "{d:?}");
    assert_eq!(d.dropped_forged, forged, "{d:?}");
    assert_eq!(d.dropped_truncated, 2, "{d:?}");
    assert_eq!(d.dropped_unknown_version, 1, "{d:?}");
    assert_eq!(d.dropped_unknown_key, 1, "{d:?}");
    assert_eq!(d.dropped_malformed, 1, "{d:?}");
    assert_eq!(d.dropped_unknown_sender, 2, "{d:?}");
    // Nothing changed: same members, same states, same metadata, no events; 77 unknown.
    assert_eq!(n1.members(), members_before);
    assert_eq!(drain(&mut rx), vec![]);
    assert_eq!(n1.state_of(77), None);
    assert!(n1.members().values().all(|(s, _)| *s == MemberState::Alive));
    tap_task.abort();
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t21_a_node_with_the_wrong_key_is_never_admitted() {
    let (mut nodes, addrs) = cluster(3).await;
    converge(&nodes).await;
    // Same key id, other bytes; and another key id altogether.
    let wrong_bytes = node_at(10, free_addr(), &addrs, Keyring::single(1, [9; 32])).await;
    let wrong_id = node_at(11, free_addr(), &addrs, Keyring::single(2, [7; 32])).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for g in &nodes {
        assert_eq!(
            g.state_of(10),
            None,
            "node {} admitted the wrong-key node",
            g.node_id()
        );
        assert_eq!(
            g.state_of(11),
            None,
            "node {} admitted the wrong-key-id node",
            g.node_id()
        );
        assert_eq!(alive_count(g), 2);
    }
    assert!(
        wrong_bytes.members().is_empty() && wrong_id.members().is_empty(),
        "the strangers learnt the cluster"
    );
    let c: Vec<CountersSnapshot> = nodes.iter().map(|g| g.counters()).collect();
    assert!(c.iter().map(|c| c.dropped_forged).sum::<u64>() > 0, "{c:?}");
    assert!(
        c.iter().map(|c| c.dropped_unknown_key).sum::<u64>() > 0,
        "{c:?}"
    );
    // The strangers got nothing they could open either.
    assert_eq!(wrong_bytes.counters().received, 0);
    assert_eq!(wrong_id.counters().received, 0);
    nodes.push(wrong_bytes);
    nodes.push(wrong_id);
    shutdown_all(nodes).await;
}

/// Waits, as the agent's rotation does, until every node reports `summary` for every other.
async fn rotation_step(nodes: &[Gossip], summary: &str) {
    let ok = wait_for(Duration::from_secs(10), || {
        nodes.iter().all(|g| {
            g.members()
                .values()
                .all(|(s, m)| *s == MemberState::Alive && m.keyring == summary)
        })
    })
    .await;
    assert!(ok.is_some(), "not every node reports keyring {summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t22_key_rotation_keeps_the_cluster_converged() {
    let (mut nodes, addrs) = cluster(3).await;
    converge(&nodes).await;
    let mut subs: Vec<_> = nodes.iter().map(|g| g.subscribe()).collect();
    let (old, new) = ([7u8; 32], [8u8; 32]);
    // 1. install the new key everywhere, the old one still seals;
    for g in &nodes {
        g.set_keyring(Keyring::new([(1, old), (2, new)], 1).expect("ring"))
            .await;
    }
    rotation_step(&nodes, "1:1,2").await;
    // 2. seal with the new key everywhere;
    for g in &nodes {
        g.set_keyring(Keyring::new([(1, old), (2, new)], 2).expect("ring"))
            .await;
    }
    rotation_step(&nodes, "2:1,2").await;
    // 3. remove the old key.
    for g in &nodes {
        g.set_keyring(Keyring::single(2, new)).await;
    }
    rotation_step(&nodes, "2:2").await;
    let before: Vec<u64> = nodes.iter().map(|g| g.counters().received).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for ((g, rx), b) in nodes.iter().zip(subs.iter_mut()).zip(before) {
        let c = g.counters();
        assert!(
            c.received > b + 5,
            "node {} stopped hearing gossip: {c:?}",
            g.node_id()
        );
        assert_eq!(
            c.dropped(),
            0,
            "node {} dropped packets during an ordered rotation: {c:?}",
            g.node_id()
        );
        let events = drain(rx);
        assert!(
            events.iter().all(|e| matches!(e, MemberEvent::Changed(_))),
            "node {}: {events:?}",
            g.node_id()
        );
        assert_eq!(alive_count(g), 2);
    }
    // A node still on the old key is now a stranger; one with the new key joins.
    let stale = node_at(20, free_addr(), &addrs, ring()).await;
    nodes.push(node_at(21, free_addr(), &addrs, Keyring::single(2, new)).await);
    assert!(wait_for(Duration::from_secs(10), || nodes
        .iter()
        .take(3)
        .all(|g| g.state_of(21) == Some(MemberState::Alive)))
    .await
    .is_some());
    let refused = wait_for(Duration::from_secs(5), || {
        nodes
            .iter()
            .map(|g| g.counters().dropped_unknown_key)
            .sum::<u64>()
            > 0
    })
    .await;
    assert!(
        refused.is_some(),
        "the stale node's packets were not refused as sealed with an unknown key"
    );
    assert!(nodes.iter().all(|g| g.state_of(20).is_none()));
    assert!(stale.members().is_empty());
    nodes.push(stale);
    shutdown_all(nodes).await;
}

/// A member holding the cluster key (node 3) forges datagrams that claim node 2 as their
/// sender, with a huge epoch (the attack that used to silence node 2): node 1 refuses them
/// as forged, node 2 stays alive. Node 3's own datagram with a huge epoch is refused as
/// from the future and does not silence node 3 either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t23_a_member_cannot_forge_another_members_sender_id() {
    let (nodes, addrs) = cluster(3).await;
    converge(&nodes).await;
    let n1 = &nodes[0];
    let mut rx = n1.subscribe();
    let before = n1.counters();
    let raw = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("attacker socket");
    let to = addrs[0];
    // 3 knows the cluster key, its own secret and everyone's public keys.
    let as_2_with_3s_secret = ring()
        .pairwise(&secret(3).0, 2, &secret(1).public(), 1)
        .expect("pair");
    let mut forged = 0u64;
    for c in 1..=20 {
        raw.send_to(
            &as_2_with_3s_secret
                .seal(2, u64::MAX - 1, c, b"x")
                .expect("seal"),
            to,
        )
        .await
        .expect("send");
        // The cluster key alone, as anyone holding it could before.
        raw.send_to(&ring().seal(2, u64::MAX - 1, c, b"x").expect("seal"), to)
            .await
            .expect("send");
        forged += 2;
    }
    // 3's own pair key, its own id, an epoch far in the future.
    let own = ring()
        .pairwise(&secret(3).0, 3, &secret(1).public(), 1)
        .expect("pair");
    raw.send_to(&own.seal(3, u64::MAX - 1, 1, b"x").expect("seal"), to)
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = delta(before, n1.counters());
    assert_eq!(d.dropped_forged, forged, "{d:?}");
    assert_eq!(d.dropped_future_epoch, 1, "{d:?}");
    assert_eq!(d.dropped_replay, 0, "{d:?}");
    assert!(d.received > 10, "node 1 stopped hearing its peers: {d:?}");
    assert_eq!(n1.state_of(2), Some(MemberState::Alive));
    assert_eq!(n1.state_of(3), Some(MemberState::Alive));
    assert!(
        drain(&mut rx)
            .iter()
            .all(|e| !matches!(e, MemberEvent::Down(_))),
        "a forged datagram took a member down"
    );
    shutdown_all(nodes).await;
}

/// A node removed from node 1's members table is an unknown sender at once: its datagrams
/// are dropped and counted, and node 1 reports it down although it still has the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t24_a_removed_member_is_dropped_as_an_unknown_sender() {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut table = membrane_gossip::PeerTable::new();
    for (i, a) in addrs.iter().enumerate() {
        list(&mut table, i as u64 + 1, *a);
    }
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        // Each node its own table, as each agent has its own registry copy.
        let peers = Peers::new(table.clone());
        let g = Gossip::start(config(i as u64 + 1, *a, &addrs[..1], ring(), peers))
            .await
            .expect("gossip starts");
        nodes.push(g);
    }
    converge(&nodes).await;
    for g in &nodes[..2] {
        g.peers().update(|t| t.remove(3));
    }
    let down = wait_for(Duration::from_secs(10), || {
        nodes[..2]
            .iter()
            .all(|g| g.state_of(3) == Some(MemberState::Down))
    })
    .await;
    assert!(down.is_some(), "the removed node still counts as alive");
    for g in &nodes[..2] {
        let c = g.counters();
        assert!(c.dropped_unknown_sender > 0, "node {}: {c:?}", g.node_id());
        assert_eq!(
            g.state_of(if g.node_id() == 1 { 2 } else { 1 }),
            Some(MemberState::Alive)
        );
    }
    shutdown_all(nodes).await;
}

/// A receiver restarted with its replay file refuses what it accepted before the restart;
/// one restarted without it (the old behaviour) would accept it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t25_a_restarted_receiver_refuses_old_datagrams() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("gossip-replay");
    let (a1, a2) = (free_addr(), free_addr());
    let (tap_addr, captured, tap_task) = tap(a2, a1).await;
    let mut view1 = membrane_gossip::PeerTable::default();
    list(&mut view1, 1, a1);
    list(&mut view1, 2, tap_addr);
    let mut view2 = membrane_gossip::PeerTable::default();
    list(&mut view2, 2, a2);
    list(&mut view2, 1, tap_addr);
    let start1 = |replay: Option<std::path::PathBuf>| {
        let mut c = config(1, a1, &[], ring(), Peers::new(view1.clone()));
        c.replay_state = replay;
        Gossip::start(c)
    };
    let n1 = start1(Some(state.clone())).await.expect("gossip starts");
    let n2 = Gossip::start(config(2, a2, &[tap_addr], ring(), Peers::new(view2)))
        .await
        .expect("gossip starts");
    let pair = vec![n1, n2];
    converge(&pair).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recorded: Vec<Vec<u8>> = captured.lock().expect("capture").clone();
    assert!(
        recorded.len() > 5,
        "the tap saw {} datagrams",
        recorded.len()
    );
    tap_task.abort();
    // Node 2 goes first, so nothing fresh reaches node 1 after this; node 1 saves on the
    // way out.
    let mut pair = pair.into_iter();
    let (n1, n2) = (pair.next().expect("n1"), pair.next().expect("n2"));
    n2.shutdown().await;
    n1.shutdown().await;
    let raw = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("attacker socket");
    for (replay, fresh_expected) in [(Some(state.clone()), false), (None, true)] {
        let n1 = start1(replay.clone()).await.expect("gossip restarts");
        for p in &recorded {
            raw.send_to(p, a1).await.expect("send");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c = n1.counters();
        if fresh_expected {
            // Without the file: the old datagrams are taken as new (what this fixes).
            assert!(c.received > 0, "{c:?}");
        } else {
            assert_eq!(c.dropped_replay, recorded.len() as u64, "{c:?}");
            assert_eq!(c.received, 0, "{c:?}");
        }
        n1.shutdown().await;
    }
}
