//! Properties of the tunnel over arbitrary input: `open` never panics and never accepts a
//! packet that is not byte for byte one that was sealed; the two ciphers are the same wire
//! format; seal and open work from many threads at once without reusing a counter.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use membrane_crypto::tunnel::{CipherKind, DropReason, EpochSecret, Header, Tunnel, OVERHEAD};
use proptest::prelude::*;

fn pair(a_kind: CipherKind, b_kind: CipherKind, a: [u8; 32], b: [u8; 32]) -> (Tunnel, Tunnel) {
    let ta = Tunnel::new(1, 1, 5, a_kind);
    let tb = Tunnel::new(1, 2, 9, b_kind);
    let (pa, pb) = (
        EpochSecret::from_bytes(a).public(),
        EpochSecret::from_bytes(b).public(),
    );
    ta.set_local_secret(3, EpochSecret::from_bytes(a));
    tb.set_local_secret(3, EpochSecret::from_bytes(b));
    ta.set_peer(2, BTreeMap::from([(3, pb)]), Some(3));
    tb.set_peer(1, BTreeMap::from([(3, pa)]), Some(3));
    (ta, tb)
}

fn fixed_pair() -> (Tunnel, Tunnel) {
    pair(CipherKind::Ring, CipherKind::Ring, [0x11; 32], [0x22; 32])
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Set { at: usize, value: u8 },
    Truncate { len: usize },
    Extend { bytes: Vec<u8> },
    Splice { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        proptest::collection::vec(any::<u8>(), 1..40).prop_map(|bytes| Mutation::Extend { bytes }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..40)
        )
            .prop_map(|(at, bytes)| Mutation::Splice { at, bytes }),
    ]
}

fn apply(pkt: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip { at, mask } if !pkt.is_empty() => {
            let i = at % pkt.len();
            pkt[i] ^= mask;
        }
        Mutation::Set { at, value } if !pkt.is_empty() => {
            let i = at % pkt.len();
            pkt[i] = *value;
        }
        Mutation::Truncate { len } => pkt.truncate(len % (pkt.len() + 1)),
        Mutation::Extend { bytes } => pkt.extend_from_slice(bytes),
        Mutation::Splice { at, bytes } => {
            let i = at % (pkt.len() + 1);
            pkt.splice(i..i, bytes.iter().copied());
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn open_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (_, b) = fixed_pair();
        let mut buf = bytes.clone();
        // Arbitrary bytes never authenticate (a 2^-128 chance aside).
        prop_assert!(b.open(&mut buf).is_err());
    }

    #[test]
    fn open_never_panics_on_headers_that_parse(
        epoch in prop_oneof![Just(3u32), any::<u32>()],
        sender in prop_oneof![Just(1u64), any::<u64>()],
        boot in any::<u32>(),
        counter in any::<u64>(),
        body in proptest::collection::vec(any::<u8>(), 16..100),
    ) {
        let (_, b) = fixed_pair();
        let mut pkt = Header { epoch, sender, boot, counter }.encode().to_vec();
        pkt.extend_from_slice(&body);
        let r = b.open(&mut pkt);
        prop_assert!(r.is_err());
        prop_assert_ne!(r.unwrap_err(), DropReason::Malformed);
    }

    #[test]
    fn mutated_packets_never_open(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let (a, b) = fixed_pair();
        let mut good = Vec::new();
        a.seal(2, &payload, &mut good).unwrap();
        let mut bad = good.clone();
        for m in &mutations {
            apply(&mut bad, m);
        }
        let mut buf = bad.clone();
        let r = b.open(&mut buf);
        if bad == good {
            let o = r.unwrap();
            prop_assert_eq!(&buf[o.payload], &payload[..]);
        } else {
            prop_assert!(r.is_err(), "a mutated packet opened");
            // The untouched original still opens afterwards: nothing was consumed.
            let mut buf = good.clone();
            let o = b.open(&mut buf).unwrap();
            prop_assert_eq!(&buf[o.payload], &payload[..]);
        }
    }

}

proptest! {
    // Fewer cases: RustCrypto is slow in debug builds and each case seals 1.5 kB six times.
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn both_ciphers_same_wire_bytes(
        a_secret in any::<[u8; 32]>(),
        b_secret in any::<[u8; 32]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let (ring_a, ring_b) = pair(CipherKind::Ring, CipherKind::Ring, a_secret, b_secret);
        let (rc_a, rc_b) = pair(CipherKind::RustCrypto, CipherKind::RustCrypto, a_secret, b_secret);
        let (mut p1, mut p2) = (Vec::new(), Vec::new());
        ring_a.seal(2, &payload, &mut p1).unwrap();
        rc_a.seal(2, &payload, &mut p2).unwrap();
        prop_assert_eq!(&p1, &p2);
        prop_assert_eq!(p1.len(), payload.len() + OVERHEAD);
        // And each opens the other's.
        let mut q1 = Vec::new();
        rc_a.seal(2, &payload, &mut q1).unwrap();
        let o = ring_b.open(&mut q1).unwrap();
        prop_assert_eq!(&q1[o.payload], &payload[..]);
        let mut q2 = Vec::new();
        ring_a.seal(2, &payload, &mut q2).unwrap();
        let o = rc_b.open(&mut q2).unwrap();
        prop_assert_eq!(&q2[o.payload], &payload[..]);
    }
}

#[test]
fn seal_and_open_across_threads() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 2000;
    let (a, b) = fixed_pair();
    let (a, b) = (Arc::new(a), Arc::new(b));
    // Seal from several threads at once: every counter is drawn exactly once.
    let sealed: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let a = a.clone();
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let mut out = Vec::new();
                            a.seal(2, format!("{t}:{i}").as_bytes(), &mut out).unwrap();
                            out
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let counters: BTreeSet<u64> = sealed
        .iter()
        .flatten()
        .map(|p| Header::parse(p).unwrap().counter)
        .collect();
    assert_eq!(counters.len(), THREADS * PER_THREAD);
    assert_eq!(counters.last(), Some(&((THREADS * PER_THREAD) as u64 - 1)));

    // Open from several threads, each packet offered twice (by two different threads):
    // exactly one of the two opens, the other is a replay.
    let all: Vec<Vec<u8>> = sealed.into_iter().flatten().collect();
    let results: Vec<(usize, usize)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (b, all) = (b.clone(), &all);
                s.spawn(move || {
                    let (mut ok, mut replay) = (0, 0);
                    // Threads t and t+THREADS/2 walk the same half of the packets.
                    let half = t % 2;
                    for (i, p) in all.iter().enumerate() {
                        if i % 2 != half {
                            continue;
                        }
                        let mut buf = p.clone();
                        match b.open(&mut buf) {
                            Ok(_) => ok += 1,
                            Err(DropReason::Replay) => replay += 1,
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                    (ok, replay)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: usize = results.iter().map(|r| r.0).sum();
    let replay: usize = results.iter().map(|r| r.1).sum();
    // 8,000 counters fit in the 8,128-counter window, so none is too old whatever the
    // interleaving: every packet opened exactly once, its second offer was a replay.
    assert!(all.len() as u64 <= membrane_crypto::tunnel::WINDOW_SIZE);
    assert_eq!(ok, all.len());
    assert_eq!(replay, all.len());
    assert_eq!(b.stats(1).opened_packets, ok as u64);
    assert_eq!(a.stats(2).sealed_packets, all.len() as u64);
}
