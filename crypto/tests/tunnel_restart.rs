//! A sender restarted mid-epoch (boot + 1, same epoch secret, counters from 0 again) never
//! seals two packets under the same (key, nonce) pair. The keys are computed here from the
//! documented derivation, independently of the tunnel's sessions, and each packet must open
//! under the key computed for its header: so the check covers what is really on the wire.

use std::collections::{BTreeMap, BTreeSet};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use membrane_crypto::tunnel::{
    derive_key, header::nonce, CipherKind, DropReason, EpochSecret, Header, KeyContext, Tunnel,
    HEADER_LEN, TAG_LEN,
};
use x25519_dalek::{PublicKey, StaticSecret};

const CLUSTER: u8 = 7;
const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 3;

#[test]
fn restarted_sender_never_repeats_a_key_nonce_pair() {
    let a_secret = *EpochSecret::generate().to_bytes();
    let b_secret = *EpochSecret::generate().to_bytes();
    let c_secret = *EpochSecret::generate().to_bytes();
    let public = |s: &[u8; 32]| EpochSecret::from_bytes(*s).public();
    let receivers = [(B, b_secret), (C, c_secret)];

    let receiver_b = Tunnel::new(CLUSTER, B, 1, CipherKind::Ring);
    receiver_b.set_local_secret(1, EpochSecret::from_bytes(b_secret));
    receiver_b.set_peer(A, BTreeMap::from([(1, public(&a_secret))]), None);

    // Three lives of node A inside epoch 1, each sealing to B and C; the second one also
    // re-sets its peers and re-installs its secret mid-life, which re-derives the sessions.
    let mut packets: Vec<(u64, Vec<u8>)> = Vec::new();
    for boot in [1u32, 2, 3] {
        let a = Tunnel::new(CLUSTER, A, boot, CipherKind::default());
        a.set_local_secret(1, EpochSecret::from_bytes(a_secret));
        for (id, s) in &receivers {
            a.set_peer(*id, BTreeMap::from([(1, public(s))]), Some(1));
        }
        for i in 0..200 {
            if boot == 2 && i == 100 {
                a.remove_local_secret(1);
                a.set_local_secret(1, EpochSecret::from_bytes(a_secret));
                a.remove_peer(C);
                a.set_peer(C, BTreeMap::from([(1, public(&c_secret))]), Some(1));
            }
            for (id, _) in &receivers {
                let mut out = Vec::new();
                a.seal(*id, format!("boot {boot} packet {i}").as_bytes(), &mut out)
                    .unwrap();
                packets.push((*id, out));
            }
        }
        // The receiver follows each restart: the new boot's packets open, the old boot's stop.
        let mut probe = Vec::new();
        a.seal(B, b"probe", &mut probe).unwrap();
        assert!(receiver_b.open(&mut probe).is_ok(), "boot {boot}");
    }

    let mut pairs = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (receiver, pkt) in &packets {
        let h = Header::parse(pkt).unwrap();
        let r_secret = receivers.iter().find(|(id, _)| id == receiver).unwrap().1;
        let shared =
            StaticSecret::from(r_secret).diffie_hellman(&PublicKey::from(public(&a_secret)));
        let key = derive_key(
            shared.as_bytes(),
            &KeyContext {
                cluster_id: CLUSTER,
                epoch: h.epoch,
                sender: h.sender,
                receiver: *receiver,
                sender_boot: h.boot,
            },
        );
        // The packet really is sealed under that key and that nonce.
        let mut body = pkt[HEADER_LEN..pkt.len() - TAG_LEN].to_vec();
        let tag = &pkt[pkt.len() - TAG_LEN..];
        ChaCha20Poly1305::new((&*key).into())
            .decrypt_in_place_detached(
                (&nonce(h.counter)).into(),
                &pkt[..HEADER_LEN],
                &mut body,
                tag.into(),
            )
            .expect("packet opens under the key derived from its header");
        keys.insert(*key);
        assert!(
            pairs.insert((*key, nonce(h.counter))),
            "(key, nonce) repeated: boot {} counter {}",
            h.boot,
            h.counter
        );
    }
    assert_eq!(pairs.len(), packets.len());
    // One key per (boot, receiver): counters restarted at 0 under new keys only.
    assert_eq!(keys.len(), 3 * receivers.len());
    let zero_counters = packets
        .iter()
        .filter(|(_, p)| Header::parse(p).unwrap().counter == 0)
        .count();
    assert_eq!(zero_counters, 3 * receivers.len());

    // The receiver refuses the first life's packets now that the third authenticated.
    let (_, first) = packets.iter().find(|(r, _)| *r == B).unwrap();
    let mut first = first.clone();
    assert_eq!(receiver_b.open(&mut first), Err(DropReason::Replay));
}
