//! Tests that cross the registry's concerns: the whole state's serialisation, and batches.
//! Each command's own tests live beside its handler.

use super::test_support::{bootstrapped, signed_node};
use super::*;

#[test]
fn t50_registry_survives_a_serde_round_trip() {
    let mut r = bootstrapped();
    r.apply(Command::AllocateIdentity {
        labels: LabelSet::parse(&["app=web"]).unwrap(),
    });
    // The issue-11 state too: a certificate, a revocation, API references.
    let n2 = signed_node(&mut r, "n2");
    signed_node(&mut r, "n3");
    r.apply(Command::AllocateIdentityFor {
        labels: LabelSet::parse(&["app=db"]).unwrap(),
        node_id: 1,
    })
    .into_result()
    .unwrap();
    r.apply(Command::RemoveNode { id: n2.id })
        .into_result()
        .unwrap();
    assert!(!r.revoked().is_empty() && r.certificates().count() == 1);
    let bytes = bincode::serialize(&r).unwrap();
    let back: Registry = bincode::deserialize(&bytes).unwrap();
    assert_eq!(back, r);
    let json = serde_json::to_vec(&r).unwrap();
    let back: Registry = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, r);
}

#[test]
fn t60_a_batch_applies_in_order_and_a_refusal_does_not_stop_it() {
    let mut r = bootstrapped();
    let web = LabelSet::parse(&["app=web"]).unwrap();
    let resp = r.apply(Command::Batch(vec![
        BatchItem::AllocateIdentity {
            labels: web.clone(),
        },
        BatchItem::ReleaseIdentity {
            labels: LabelSet::parse(&["app=none"]).unwrap(),
        },
        BatchItem::AllocateIdentity {
            labels: web.clone(),
        },
    ]));
    let Response::Batch(v) = resp else {
        panic!("{resp:?}")
    };
    assert!(matches!(v[0], Response::Identity { created: true, .. }));
    assert!(matches!(
        v[1],
        Response::Err(RegistryError::IdentityNotFound { .. })
    ));
    assert!(matches!(
        v[2],
        Response::Identity {
            created: false,
            identity: IdentityRecord { references: 2, .. }
        }
    ));
}
