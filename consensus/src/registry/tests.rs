//! Registry state machine tests: each command, and that a refused command changes nothing.

use super::*;

const HASH_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const HASH_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const T0: i64 = 1_000_000;

fn config() -> ClusterConfig {
    ClusterConfig {
        cluster_id: 7,
        name: "lab".into(),
        pod_pool: "10.128.0.0/22".parse().unwrap(),
        node_prefix_len: 24,
        ca_cert_pem: "ca".into(),
        ca_key_pem: "key".into(),
        created_at: T0,
    }
}

fn new_node(name: &str) -> NewNode {
    NewNode {
        name: name.into(),
        rpc_addr: format!("{name}:7700"),
        tls_key_sha256: "00".repeat(32),
        x25519_public: "11".repeat(32),
    }
}

fn token(id: &str, hash: &str, max_uses: u32) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        secret_hash: hash.into(),
        description: String::new(),
        created_at: T0,
        expires_at: T0 + 3600,
        max_uses,
        uses: 0,
        revoked: false,
    }
}

fn gossip_key(id: u32) -> GossipKey {
    GossipKey {
        id,
        key_hex: "ab".repeat(32),
    }
}

fn bootstrapped() -> Registry {
    let mut r = Registry::default();
    let resp = r.apply(Command::Bootstrap {
        config: config(),
        first_node: new_node("n1"),
        first_token: token("abcdef", HASH_A, 1),
        gossip_key: gossip_key(1),
    });
    assert!(
        matches!(resp, Response::Node(NodeRecord { id: 1, .. })),
        "{resp:?}"
    );
    r
}

fn admit(r: &mut Registry, token_id: &str, hash: &str, name: &str, now: i64) -> Response {
    r.apply(Command::AdmitNode {
        token_id: token_id.into(),
        presented_hash: hash.into(),
        node: new_node(name),
        now,
    })
}

/// Applies `cmd`, expects `expected` error, and checks the registry did not change.
fn refused(r: &mut Registry, cmd: Command, expected: fn(&RegistryError) -> bool) {
    let before = r.clone();
    match r.apply(cmd) {
        Response::Err(e) => assert!(expected(&e), "unexpected error: {e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(*r, before, "a refused command changed the registry");
}

#[test]
fn t10_bootstrap_creates_node_1_with_the_first_block() {
    let r = bootstrapped();
    let n1 = r.node(1).unwrap();
    assert_eq!(n1.pod_cidr.to_string(), "10.128.0.0/24");
    assert_eq!(r.cluster().unwrap().cluster_id, 7);
    assert!(r.token("abcdef").is_some());
}

#[test]
fn t11_bootstrap_twice_is_refused() {
    let mut r = bootstrapped();
    refused(
        &mut r,
        Command::Bootstrap {
            config: config(),
            first_node: new_node("x"),
            first_token: token("zzzzzz", HASH_B, 1),
            gossip_key: gossip_key(1),
        },
        |e| matches!(e, RegistryError::AlreadyBootstrapped { id: 7, .. }),
    );
}

#[test]
fn t12_commands_before_bootstrap_are_refused() {
    let mut r = Registry::default();
    refused(
        &mut r,
        Command::CreateToken {
            token: token("abcdef", HASH_A, 1),
        },
        |e| matches!(e, RegistryError::NotBootstrapped),
    );
    refused(
        &mut r,
        Command::AllocateIdentity {
            labels: LabelSet::parse(&["app=web"]).unwrap(),
        },
        |e| matches!(e, RegistryError::NotBootstrapped),
    );
}

#[test]
fn t20_admit_with_a_valid_token_assigns_id_and_cidr() {
    let mut r = bootstrapped();
    let Response::Node(n) = admit(&mut r, "abcdef", HASH_A, "n2", T0 + 10) else {
        panic!()
    };
    assert_eq!(n.id, 2);
    assert_eq!(n.pod_cidr.to_string(), "10.128.1.0/24");
    assert_eq!(r.token("abcdef").unwrap().uses, 1);
}

#[test]
fn t21_token_faults_are_refused_with_their_reason_and_change_nothing() {
    let mut r = bootstrapped();
    let cmd = |id: &str, hash: &str, name: &str, now: i64| Command::AdmitNode {
        token_id: id.into(),
        presented_hash: hash.into(),
        node: new_node(name),
        now,
    };
    refused(&mut r, cmd("nosuch", HASH_A, "n2", T0), |e| {
        matches!(e, RegistryError::TokenNotFound { .. })
    });
    refused(&mut r, cmd("abcdef", HASH_B, "n2", T0), |e| {
        matches!(e, RegistryError::TokenSecretMismatch { .. })
    });
    refused(&mut r, cmd("abcdef", HASH_A, "n2", T0 + 3600), |e| {
        matches!(e, RegistryError::TokenExpired { .. })
    });
    // Use it once; the single-use token is then used up.
    assert!(matches!(
        admit(&mut r, "abcdef", HASH_A, "n2", T0),
        Response::Node(_)
    ));
    refused(&mut r, cmd("abcdef", HASH_A, "n3", T0), |e| {
        matches!(e, RegistryError::TokenUsedUp { uses: 1, .. })
    });
    // Revoked.
    assert_eq!(
        r.apply(Command::CreateToken {
            token: token("ghijkl", HASH_B, 5)
        }),
        Response::Ok
    );
    assert_eq!(
        r.apply(Command::RevokeToken {
            id: "ghijkl".into()
        }),
        Response::Ok
    );
    refused(&mut r, cmd("ghijkl", HASH_B, "n3", T0), |e| {
        matches!(e, RegistryError::TokenRevoked { .. })
    });
    assert_eq!(r.token("ghijkl").unwrap().state(T0), TokenState::Revoked);
}

#[test]
fn t22_a_taken_name_is_refused() {
    let mut r = bootstrapped();
    r.apply(Command::CreateToken {
        token: token("multi1", HASH_B, 10),
    });
    refused(
        &mut r,
        Command::AdmitNode {
            token_id: "multi1".into(),
            presented_hash: HASH_B.into(),
            node: new_node("n1"),
            now: T0,
        },
        |e| matches!(e, RegistryError::NodeNameTaken { id: 1, .. }),
    );
    assert_eq!(
        r.token("multi1").unwrap().uses,
        0,
        "a refused join does not use the token"
    );
}

#[test]
fn t23_node_ids_are_never_reused() {
    let mut r = bootstrapped();
    r.apply(Command::CreateToken {
        token: token("multi1", HASH_B, 10),
    });
    let Response::Node(n2) = admit(&mut r, "multi1", HASH_B, "n2", T0) else {
        panic!()
    };
    assert_eq!(r.apply(Command::RemoveNode { id: n2.id }), Response::Ok);
    let Response::Node(n3) = admit(&mut r, "multi1", HASH_B, "n3", T0) else {
        panic!()
    };
    assert_eq!(n3.id, 3);
    assert_eq!(
        n3.pod_cidr, n2.pod_cidr,
        "the freed block is handed out again"
    );
}

#[test]
fn t24_pod_cidr_exhaustion_is_refused() {
    let mut r = bootstrapped();
    r.apply(Command::CreateToken {
        token: token("multi1", HASH_B, 10),
    });
    for name in ["n2", "n3", "n4"] {
        assert!(matches!(
            admit(&mut r, "multi1", HASH_B, name, T0),
            Response::Node(_)
        ));
    }
    // The /22 pool holds four /24 blocks.
    refused(
        &mut r,
        Command::AdmitNode {
            token_id: "multi1".into(),
            presented_hash: HASH_B.into(),
            node: new_node("n5"),
            now: T0,
        },
        |e| matches!(e, RegistryError::PodCidrExhausted { prefix: 24, .. }),
    );
}

#[test]
fn t30_token_validation() {
    let mut r = bootstrapped();
    let mut bad = token("tok001", HASH_B, 0);
    refused(&mut r, Command::CreateToken { token: bad.clone() }, |e| {
        matches!(e, RegistryError::InvalidToken(_))
    });
    bad.max_uses = 1;
    bad.expires_at = bad.created_at;
    refused(&mut r, Command::CreateToken { token: bad }, |e| {
        matches!(e, RegistryError::InvalidToken(_))
    });
    refused(
        &mut r,
        Command::CreateToken {
            token: token("abcdef", HASH_B, 1),
        },
        |e| matches!(e, RegistryError::TokenExists { .. }),
    );
    refused(
        &mut r,
        Command::RevokeToken {
            id: "nosuch".into(),
        },
        |e| matches!(e, RegistryError::TokenNotFound { .. }),
    );
}

#[test]
fn t40_identities_through_commands() {
    let mut r = bootstrapped();
    let labels = LabelSet::parse(&["app=web"]).unwrap();
    let Response::Identity {
        identity,
        created: true,
    } = r.apply(Command::AllocateIdentity {
        labels: labels.clone(),
    })
    else {
        panic!()
    };
    assert_eq!(identity.id, (7 << 16) | 256);
    let again = r.apply(Command::AllocateIdentity {
        labels: labels.clone(),
    });
    assert!(matches!(again, Response::Identity { created: false, .. }));
    assert_eq!(
        r.apply(Command::ReleaseIdentity {
            labels: labels.clone()
        }),
        Response::Released {
            id: identity.id,
            references: 1,
            removed: false
        }
    );
    assert_eq!(
        r.apply(Command::ReleaseIdentity {
            labels: labels.clone()
        }),
        Response::Released {
            id: identity.id,
            references: 0,
            removed: true
        }
    );
    refused(&mut r, Command::ReleaseIdentity { labels }, |e| {
        matches!(e, RegistryError::IdentityNotFound { .. })
    });
}

#[test]
fn t50_registry_survives_a_serde_round_trip() {
    let mut r = bootstrapped();
    r.apply(Command::AllocateIdentity {
        labels: LabelSet::parse(&["app=web"]).unwrap(),
    });
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
        Command::AllocateIdentity {
            labels: web.clone(),
        },
        Command::ReleaseIdentity {
            labels: LabelSet::parse(&["app=none"]).unwrap(),
        },
        Command::AllocateIdentity {
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

#[test]
fn t70_gossip_key_rotation_through_commands() {
    let mut r = bootstrapped();
    assert_eq!(r.gossip_keyring().unwrap().primary(), 1);
    refused(&mut r, Command::RemoveGossipKey { id: 1 }, |e| {
        matches!(e, RegistryError::InvalidGossipKey(_))
    });
    refused(&mut r, Command::UseGossipKey { id: 2 }, |e| {
        matches!(e, RegistryError::InvalidGossipKey(_))
    });
    assert_eq!(
        r.apply(Command::InstallGossipKey { key: gossip_key(2) }),
        Response::Ok
    );
    assert_eq!(r.apply(Command::UseGossipKey { id: 2 }), Response::Ok);
    assert_eq!(r.apply(Command::RemoveGossipKey { id: 1 }), Response::Ok);
    let ring = r.gossip_keyring().unwrap();
    assert_eq!((ring.primary(), ring.keys().len()), (2, 1));
}

fn new_endpoint(
    node_id: u64,
    container: &str,
    ifname: &str,
    netns: &str,
    labels: &[&str],
) -> Command {
    Command::AddEndpoint {
        endpoint: NewEndpoint {
            node_id,
            container_id: container.into(),
            ifname: ifname.into(),
            netns: netns.into(),
            labels: LabelSet::parse(labels).unwrap(),
            now: T0 + 5,
        },
    }
}

fn added(resp: Response) -> (EndpointRecord, bool) {
    match resp {
        Response::Endpoint { endpoint, created } => (endpoint, created),
        other => panic!("expected an endpoint, got {other:?}"),
    }
}

#[test]
fn t80_add_endpoint_allocates_address_and_identity() {
    let mut r = bootstrapped();
    let (a, created) = added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
    assert!(created);
    assert_eq!(a.ipv4, "10.128.0.2".parse::<std::net::Ipv4Addr>().unwrap());
    assert_eq!(a.id, 1);
    let ident = r.identity(a.identity).expect("identity allocated");
    assert_eq!(ident.references, 1);
    let (b, _) = added(r.apply(new_endpoint(1, "c2", "eth0", "/run/netns/b", &["app=web"])));
    assert_eq!(b.ipv4, "10.128.0.3".parse::<std::net::Ipv4Addr>().unwrap());
    assert_eq!(b.identity, a.identity, "same labels, same identity");
    assert_eq!(r.identity(a.identity).unwrap().references, 2);
    assert_eq!(b.id, 2);
}

#[test]
fn t81_repeated_add_returns_the_same_record_and_takes_no_reference() {
    let mut r = bootstrapped();
    let (a, _) = added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
    let before = r.clone();
    let (again, created) =
        added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
    assert!(!created);
    assert_eq!(again, a);
    assert_eq!(r, before);
}

#[test]
fn t82_conflicting_adds_are_refused_and_change_nothing() {
    let mut r = bootstrapped();
    added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
    // Same container and ifname, another namespace.
    refused(
        &mut r,
        new_endpoint(1, "c1", "eth0", "/run/netns/other", &["app=web"]),
        |e| matches!(e, RegistryError::EndpointConflict(m) if m.contains("already has interface")),
    );
    // Another container claiming the same interface of the same namespace.
    refused(
        &mut r,
        new_endpoint(1, "c2", "eth0", "/run/netns/a", &["app=db"]),
        |e| matches!(e, RegistryError::EndpointConflict(m) if m.contains("already belongs")),
    );
    refused(
        &mut r,
        new_endpoint(9, "c3", "eth0", "/run/netns/c", &["a=b"]),
        |e| matches!(e, RegistryError::NodeNotFound { id: 9 }),
    );
    for (c, i, n) in [
        ("", "eth0", "/run/netns/x"),
        ("c/4", "eth0", "/run/netns/x"),
        ("c4", "", "/run/netns/x"),
        ("c4", "a-name-too-long-for-linux", "/run/netns/x"),
        ("c4", "et h0", "/run/netns/x"),
        ("c4", "eth0", "relative/path"),
    ] {
        refused(&mut r, new_endpoint(1, c, i, n, &["a=b"]), |e| {
            matches!(e, RegistryError::InvalidEndpoint(_))
        });
    }
}

#[test]
fn t83_exhausted_pod_cidr_is_refused_and_allocates_nothing() {
    let mut r = Registry::default();
    let mut cfg = config();
    cfg.node_prefix_len = 30;
    r.apply(Command::Bootstrap {
        config: cfg,
        first_node: new_node("n1"),
        first_token: token("abcdef", HASH_A, 1),
        gossip_key: gossip_key(1),
    })
    .into_result()
    .unwrap();
    added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
    refused(
        &mut r,
        new_endpoint(1, "c2", "eth0", "/run/netns/b", &["app=new"]),
        |e| {
            matches!(
                e,
                RegistryError::EndpointAddressesExhausted { capacity: 1, .. }
            )
        },
    );
    let labels = LabelSet::parse(&["app=new"]).unwrap();
    assert!(r.identity_by_labels(&labels).is_none(), "no identity taken");
}

#[test]
fn t84_remove_endpoint_frees_address_and_reference() {
    let mut r = bootstrapped();
    let (a, _) = added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
    let resp = r.apply(Command::RemoveEndpoint {
        node_id: 1,
        container_id: "c1".into(),
        ifname: "eth0".into(),
    });
    assert_eq!(resp, Response::EndpointRemoved(Some(a.clone())));
    assert!(r.identity(a.identity).is_none(), "last reference released");
    assert_eq!(r.endpoints().count(), 0);
    // Unknown: fine, nothing changes.
    let before = r.clone();
    let resp = r.apply(Command::RemoveEndpoint {
        node_id: 1,
        container_id: "c1".into(),
        ifname: "eth0".into(),
    });
    assert_eq!(resp, Response::EndpointRemoved(None));
    assert_eq!(r, before);
    // The address is free again.
    let (b, _) = added(r.apply(new_endpoint(1, "c9", "eth0", "/run/netns/z", &["app=web"])));
    assert_eq!(b.ipv4, a.ipv4);
}

#[test]
fn t85_removing_a_node_removes_its_endpoints_and_their_references() {
    let mut r = bootstrapped();
    r.apply(Command::CreateToken {
        token: token("ghijkl", HASH_B, 1),
    });
    let n2 = match admit(&mut r, "ghijkl", HASH_B, "n2", T0 + 1) {
        Response::Node(n) => n,
        other => panic!("{other:?}"),
    };
    let (on1, _) = added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
    let (on2, _) = added(r.apply(new_endpoint(
        n2.id,
        "c2",
        "eth0",
        "/run/netns/b",
        &["app=web"],
    )));
    assert_eq!(
        on2.ipv4,
        "10.128.1.2".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert_eq!(r.identity(on1.identity).unwrap().references, 2);
    r.apply(Command::RemoveNode { id: n2.id })
        .into_result()
        .unwrap();
    assert_eq!(r.endpoints().collect::<Vec<_>>(), vec![&on1]);
    assert_eq!(r.identity(on1.identity).unwrap().references, 1);
}

fn policy(name: &str) -> NewPolicy {
    NewPolicy {
        name: name.into(),
        source: format!("metadata:\n  name: {name}\n"),
    }
}

#[test]
fn t90_policies_are_stored_under_a_rising_revision() {
    let mut r = bootstrapped();
    assert_eq!(r.policy_revision(), 0);
    let resp = r.apply(Command::PutPolicies {
        policies: vec![policy("a"), policy("b")],
        now: T0,
    });
    assert_eq!(resp, Response::PolicyRevision(1));
    assert_eq!(r.policies().count(), 2);
    // Replacing one keeps the other and bumps the revision once.
    let resp = r.apply(Command::PutPolicies {
        policies: vec![policy("a")],
        now: T0 + 1,
    });
    assert_eq!(resp, Response::PolicyRevision(2));
    assert_eq!(r.policy("a").unwrap().revision, 2);
    assert_eq!(r.policy("b").unwrap().revision, 1);
    let resp = r.apply(Command::DeletePolicy { name: "b".into() });
    assert_eq!(resp, Response::PolicyRevision(3));
    assert!(r.policy("b").is_none());
}

#[test]
fn t91_bad_policy_writes_are_refused_and_change_nothing() {
    let mut r = bootstrapped();
    r.apply(Command::PutPolicies {
        policies: vec![policy("a")],
        now: T0,
    });
    for bad in [
        vec![],
        vec![policy("Upper")],
        vec![policy("-dash")],
        vec![policy("ok"), policy("ok")],
        vec![NewPolicy {
            name: "empty".into(),
            source: "  ".into(),
        }],
    ] {
        refused(
            &mut r,
            Command::PutPolicies {
                policies: bad,
                now: T0,
            },
            |e| matches!(e, RegistryError::InvalidPolicy(_)),
        );
    }
    refused(
        &mut r,
        Command::DeletePolicy {
            name: "nope".into(),
        },
        |e| matches!(e, RegistryError::PolicyNotFound { .. }),
    );
    assert_eq!(r.policy_revision(), 1);
}
