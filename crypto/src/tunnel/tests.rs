//! Every way a packet can be wrong, and the session rules, on two in-memory nodes.

use std::collections::BTreeMap;

use super::*;

const CLUSTER: u8 = 1;
const A: u64 = 10;
const B: u64 = 20;

struct Pair {
    a: Tunnel,
    b: Tunnel,
    a_secret: [u8; 32],
    b_secret: [u8; 32],
}

fn secret_bytes() -> [u8; 32] {
    *EpochSecret::generate().to_bytes()
}

fn pub_of(bytes: &[u8; 32]) -> [u8; 32] {
    EpochSecret::from_bytes(*bytes).public()
}

/// Nodes A (boot 1) and B (boot 1), both with epoch 1 installed and sending with it.
fn pair(kind: CipherKind) -> Pair {
    let (a_secret, b_secret) = (secret_bytes(), secret_bytes());
    let a = Tunnel::new(CLUSTER, A, 1, kind);
    let b = Tunnel::new(CLUSTER, B, 1, kind);
    a.set_local_secret(1, EpochSecret::from_bytes(a_secret));
    b.set_local_secret(1, EpochSecret::from_bytes(b_secret));
    a.set_peer(B, BTreeMap::from([(1, pub_of(&b_secret))]), Some(1));
    b.set_peer(A, BTreeMap::from([(1, pub_of(&a_secret))]), Some(1));
    Pair {
        a,
        b,
        a_secret,
        b_secret,
    }
}

fn seal(t: &Tunnel, peer: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    t.seal(peer, payload, &mut out).unwrap();
    out
}

fn open(t: &Tunnel, pkt: &[u8]) -> Result<Vec<u8>, DropReason> {
    let mut buf = pkt.to_vec();
    let o = t.open(&mut buf)?;
    Ok(buf[o.payload].to_vec())
}

#[test]
fn round_trip_both_ways() {
    for kind in CipherKind::ALL {
        let p = pair(kind);
        let pkt = seal(&p.a, B, b"hello b");
        assert_eq!(pkt.len(), OVERHEAD + 7);
        let h = Header::parse(&pkt).unwrap();
        assert_eq!((h.epoch, h.sender, h.boot, h.counter), (1, A, 1, 0));
        let mut buf = pkt.clone();
        let o = p.b.open(&mut buf).unwrap();
        assert_eq!((o.sender, o.epoch), (A, 1));
        assert_eq!(&buf[o.payload], b"hello b");
        assert_eq!(open(&p.a, &seal(&p.b, A, b"")).unwrap(), b"");
        let sa = p.a.stats(B);
        assert_eq!((sa.sealed_packets, sa.sealed_bytes), (1, 7));
        assert_eq!((sa.opened_packets, sa.opened_bytes), (1, 0));
        assert_eq!(p.b.stats(A).opened_bytes, 7);
        // The payload is not in the packet in clear.
        assert!(!pkt.windows(7).any(|w| w == b"hello b"));
    }
}

#[test]
fn counters_increase_and_seal_clears_out() {
    let p = pair(CipherKind::Ring);
    let mut out = vec![1, 2, 3];
    for i in 0..5u64 {
        p.a.seal(B, b"x", &mut out).unwrap();
        assert_eq!(Header::parse(&out).unwrap().counter, i);
        assert_eq!(out.len(), OVERHEAD + 1);
    }
}

#[test]
fn malformed_packets() {
    let p = pair(CipherKind::Ring);
    let good = seal(&p.a, B, b"payload");
    for len in [0, 1, HEADER_LEN, OVERHEAD - 1] {
        assert_eq!(
            open(&p.b, &good[..len.min(good.len())]),
            Err(DropReason::Malformed),
            "{len}"
        );
    }
    for (i, v) in [(0usize, 0u8), (0, 2), (0, 0xff), (1, 1), (2, 1), (3, 1)] {
        let mut bad = good.clone();
        bad[i] = v;
        assert_eq!(open(&p.b, &bad), Err(DropReason::Malformed), "byte {i}={v}");
    }
    // None of that spent the counter: the good packet still opens.
    assert_eq!(open(&p.b, &good).unwrap(), b"payload");
}

#[test]
fn every_flipped_bit_fails() {
    let p = pair(CipherKind::RustCrypto);
    let good = seal(&p.a, B, b"some payload bytes");
    for byte in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[byte] ^= 1 << bit;
            let r = open(&p.b, &bad);
            let want: &[DropReason] = match byte {
                0..=3 => &[DropReason::Malformed],
                4..=7 => &[DropReason::StaleEpoch],
                8..=15 => &[DropReason::UnknownSender],
                // Boot and counter are authenticated; a flipped boot may look older (replay)
                // or newer (derive and fail), a flipped counter is a fresh counter that fails.
                16..=19 => &[DropReason::Auth, DropReason::Replay],
                _ => &[DropReason::Auth],
            };
            assert!(
                want.contains(&r.clone().unwrap_err()),
                "byte {byte} bit {bit}: {r:?}"
            );
        }
    }
    assert!(open(&p.b, &good).is_ok());
}

#[test]
fn replayed_and_too_old() {
    let p = pair(CipherKind::Ring);
    let first = seal(&p.a, B, b"0");
    assert!(open(&p.b, &first).is_ok());
    assert_eq!(open(&p.b, &first), Err(DropReason::Replay));
    let mut later = Vec::new();
    for _ in 0..WINDOW_SIZE + 10 {
        later.push(seal(&p.a, B, b"n"));
    }
    // Out of order inside the window is fine.
    assert!(open(&p.b, &later[WINDOW_SIZE as usize + 5]).is_ok());
    assert!(open(&p.b, &later[100]).is_ok());
    assert_eq!(open(&p.b, &later[100]), Err(DropReason::Replay));
    // Counter 1 is now more than WINDOW_SIZE below the top: too old, though never seen.
    assert_eq!(open(&p.b, &later[0]), Err(DropReason::Replay));
}

#[test]
fn forged_packets_do_not_move_the_window() {
    let p = pair(CipherKind::Ring);
    let good = seal(&p.a, B, b"x");
    // A forger puts a huge counter in a header; the tag fails and the window stays put.
    let mut forged = good.clone();
    forged[20..28].copy_from_slice(&(1u64 << 50).to_be_bytes());
    assert_eq!(open(&p.b, &forged), Err(DropReason::Auth));
    assert!(open(&p.b, &good).is_ok());
}

#[test]
fn wrong_epoch_unknown_sender_wrong_receiver() {
    let p = pair(CipherKind::Ring);
    let mut pkt = seal(&p.a, B, b"x");
    pkt[4..8].copy_from_slice(&2u32.to_be_bytes());
    assert_eq!(open(&p.b, &pkt), Err(DropReason::StaleEpoch));

    let stranger = Tunnel::new(CLUSTER, 99, 1, CipherKind::Ring);
    stranger.set_local_secret(1, EpochSecret::generate());
    stranger.set_peer(B, BTreeMap::from([(1, pub_of(&p.b_secret))]), Some(1));
    assert_eq!(
        open(&p.b, &seal(&stranger, B, b"x")),
        Err(DropReason::UnknownSender)
    );

    // A third node C that B knows, sealing "as A": it lacks A's secret, so the tag fails.
    let c_secret = secret_bytes();
    let c = Tunnel::new(CLUSTER, A, 1, CipherKind::Ring);
    c.set_local_secret(1, EpochSecret::from_bytes(c_secret));
    c.set_peer(B, BTreeMap::from([(1, pub_of(&p.b_secret))]), Some(1));
    assert_eq!(open(&p.b, &seal(&c, B, b"x")), Err(DropReason::Auth));

    // A packet for B opened by a node that is not B (A itself, or C) does not authenticate.
    let to_b = seal(&p.a, B, b"x");
    let other = Tunnel::new(CLUSTER, 30, 1, CipherKind::Ring);
    other.set_local_secret(1, EpochSecret::from_bytes(p.b_secret));
    other.set_peer(A, BTreeMap::from([(1, pub_of(&p.a_secret))]), None);
    assert_eq!(open(&other, &to_b), Err(DropReason::Auth));

    // Another cluster id derives other keys.
    let b2 = Tunnel::new(CLUSTER + 1, B, 1, CipherKind::Ring);
    b2.set_local_secret(1, EpochSecret::from_bytes(p.b_secret));
    b2.set_peer(A, BTreeMap::from([(1, pub_of(&p.a_secret))]), None);
    assert_eq!(open(&b2, &to_b), Err(DropReason::Auth));
    assert!(open(&p.b, &to_b).is_ok());
}

#[test]
fn no_key_cases() {
    let p = pair(CipherKind::Ring);
    let mut out = vec![9];
    assert_eq!(p.a.seal(77, b"x", &mut out), Err(DropReason::NoKey));
    assert!(out.is_empty());
    p.a.set_peer(B, BTreeMap::from([(1, pub_of(&p.b_secret))]), None);
    assert_eq!(p.a.seal(B, b"x", &mut out), Err(DropReason::NoKey));
    // Send epoch 2, for which A has no secret and B no key.
    p.a.set_peer(B, BTreeMap::from([(1, pub_of(&p.b_secret))]), Some(2));
    assert_eq!(p.a.seal(B, b"x", &mut out), Err(DropReason::NoKey));
    p.a.set_local_secret(2, EpochSecret::generate());
    assert_eq!(p.a.seal(B, b"x", &mut out), Err(DropReason::NoKey));
    // A low-order peer key is never used.
    p.a.set_peer(B, BTreeMap::from([(2, [0u8; 32])]), Some(2));
    assert_eq!(p.a.seal(B, b"x", &mut out), Err(DropReason::NoKey));
}

#[test]
fn key_exhausted_at_the_limit() {
    let p = pair(CipherKind::Ring);
    p.a.set_next_counter(B, 1, REJECT_AFTER_MESSAGES - 1);
    let last = seal(&p.a, B, b"last");
    assert_eq!(
        Header::parse(&last).unwrap().counter,
        REJECT_AFTER_MESSAGES - 1
    );
    assert!(open(&p.b, &last).is_ok());
    let mut out = Vec::new();
    assert_eq!(p.a.seal(B, b"x", &mut out), Err(DropReason::KeyExhausted));
    assert_eq!(p.a.seal(B, b"x", &mut out), Err(DropReason::KeyExhausted));
    // A new epoch is a new key and a new counter.
    let (a2, b2) = (secret_bytes(), secret_bytes());
    p.a.set_local_secret(2, EpochSecret::from_bytes(a2));
    p.b.set_local_secret(2, EpochSecret::from_bytes(b2));
    p.a.set_peer(
        B,
        BTreeMap::from([(1, pub_of(&p.b_secret)), (2, pub_of(&b2))]),
        Some(2),
    );
    p.b.set_peer(
        A,
        BTreeMap::from([(1, pub_of(&p.a_secret)), (2, pub_of(&a2))]),
        Some(2),
    );
    let pkt = seal(&p.a, B, b"new");
    assert_eq!(Header::parse(&pkt).unwrap().counter, 0);
    assert_eq!(open(&p.b, &pkt).unwrap(), b"new");
}

#[test]
fn rotation_overlap_then_retire() {
    let p = pair(CipherKind::Ring);
    let old = seal(&p.a, B, b"old epoch");
    let old2 = seal(&p.a, B, b"old epoch 2");
    // Epoch 2: both install the receive side first, then A switches.
    let (a2, b2) = (secret_bytes(), secret_bytes());
    p.a.set_local_secret(2, EpochSecret::from_bytes(a2));
    p.b.set_local_secret(2, EpochSecret::from_bytes(b2));
    let a_keys = BTreeMap::from([(1, pub_of(&p.a_secret)), (2, pub_of(&a2))]);
    p.b.set_peer(A, a_keys.clone(), Some(1));
    assert!(open(&p.b, &old).is_ok());
    p.a.set_peer(
        B,
        BTreeMap::from([(1, pub_of(&p.b_secret)), (2, pub_of(&b2))]),
        Some(2),
    );
    let new = seal(&p.a, B, b"new epoch");
    assert_eq!(Header::parse(&new).unwrap().epoch, 2);
    assert_eq!(open(&p.b, &new).unwrap(), b"new epoch");
    // Re-setting the peer with the same keys keeps the replay windows.
    p.b.set_peer(A, a_keys, Some(2));
    assert_eq!(open(&p.b, &old), Err(DropReason::Replay));
    assert_eq!(open(&p.b, &new), Err(DropReason::Replay));
    // Retire epoch 1 at B (peer keys), then at A (secret).
    p.b.set_peer(A, BTreeMap::from([(2, pub_of(&a2))]), Some(2));
    assert_eq!(open(&p.b, &old2), Err(DropReason::StaleEpoch));
    p.b.remove_local_secret(2);
    assert_eq!(
        open(&p.b, &seal(&p.a, B, b"x")),
        Err(DropReason::StaleEpoch)
    );
    assert_eq!(p.b.accepted_epochs(A), vec![2]);
}

#[test]
fn re_accepting_an_erased_epoch_does_not_reopen_its_replays() {
    let p = pair(CipherKind::Ring);
    let pkts: Vec<_> = (0..5).map(|_| seal(&p.a, B, b"x")).collect();
    for k in &pkts[..3] {
        assert!(open(&p.b, k).is_ok());
    }
    let keys = BTreeMap::from([(1, pub_of(&p.a_secret))]);
    p.b.set_peer(A, BTreeMap::new(), None);
    p.b.set_peer(A, keys.clone(), None);
    assert_eq!(open(&p.b, &pkts[0]), Err(DropReason::Replay));
    assert!(open(&p.b, &pkts[3]).is_ok());
    p.b.remove_peer(A);
    assert_eq!(open(&p.b, &pkts[4]), Err(DropReason::UnknownSender));
    p.b.set_peer(A, keys, None);
    assert_eq!(open(&p.b, &pkts[3]), Err(DropReason::Replay));
    assert!(open(&p.b, &pkts[4]).is_ok());
    // Removing and reinstalling B's own secret: same thing.
    let next = seal(&p.a, B, b"x");
    p.b.remove_local_secret(1);
    p.b.set_local_secret(1, EpochSecret::from_bytes(p.b_secret));
    assert_eq!(open(&p.b, &pkts[4]), Err(DropReason::Replay));
    assert!(open(&p.b, &next).is_ok());
}

#[test]
fn send_counter_survives_re_derivation() {
    let p = pair(CipherKind::Ring);
    for _ in 0..3 {
        seal(&p.a, B, b"x");
    }
    p.a.remove_peer(B);
    p.a.set_peer(B, BTreeMap::from([(1, pub_of(&p.b_secret))]), Some(1));
    assert_eq!(Header::parse(&seal(&p.a, B, b"x")).unwrap().counter, 3);
    p.a.remove_local_secret(1);
    p.a.set_local_secret(1, EpochSecret::from_bytes(p.a_secret));
    assert_eq!(Header::parse(&seal(&p.a, B, b"x")).unwrap().counter, 4);
}

#[test]
fn restarted_sender_lower_boot_is_replay() {
    let p = pair(CipherKind::Ring);
    let boot1: Vec<_> = (0..3).map(|_| seal(&p.a, B, b"boot1")).collect();
    assert!(open(&p.b, &boot1[0]).is_ok());
    // A restarts: same secret, boot 2, counter from 0.
    let a2 = Tunnel::new(CLUSTER, A, 2, CipherKind::Ring);
    a2.set_local_secret(1, EpochSecret::from_bytes(p.a_secret));
    a2.set_peer(B, BTreeMap::from([(1, pub_of(&p.b_secret))]), Some(1));
    // Before a boot-2 packet authenticates, boot 1 still works; a forged boot-3 header
    // changes nothing.
    assert!(open(&p.b, &boot1[1]).is_ok());
    let mut forged = boot1[2].clone();
    forged[16..20].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(open(&p.b, &forged), Err(DropReason::Auth));
    let fresh = seal(&a2, B, b"boot2");
    assert_eq!(Header::parse(&fresh).unwrap().counter, 0);
    assert_eq!(open(&p.b, &fresh).unwrap(), b"boot2");
    assert_eq!(open(&p.b, &fresh), Err(DropReason::Replay));
    // Boot 1 is over for good.
    assert_eq!(open(&p.b, &boot1[2]), Err(DropReason::Replay));
    assert!(open(&p.b, &seal(&a2, B, b"more")).is_ok());
}

#[test]
fn replacing_a_local_secret_erases_its_sessions() {
    let p = pair(CipherKind::Ring);
    assert!(open(&p.b, &seal(&p.a, B, b"x")).is_ok());
    // B gets a different secret for epoch 1 (say, re-keyed after a wipe): A's packets under
    // B's old key no longer authenticate.
    p.b.set_local_secret(1, EpochSecret::generate());
    assert_eq!(open(&p.b, &seal(&p.a, B, b"x")), Err(DropReason::Auth));
    // Same secret again changes nothing.
    let q = pair(CipherKind::Ring);
    let pkt = seal(&q.a, B, b"x");
    q.b.set_local_secret(1, EpochSecret::from_bytes(q.b_secret));
    assert!(open(&q.b, &pkt).is_ok());
}

#[test]
fn drop_reason_names() {
    let names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "malformed",
            "auth",
            "replay",
            "stale-epoch",
            "unknown-sender",
            "no-key",
            "key-exhausted"
        ]
    );
}
