//! Fixtures shared by the registry's command tests: a bootstrapped registry and the records
//! the commands carry.

use super::{
    CertRecord, ClusterConfig, Command, EndpointRecord, GossipKey, LabelSet, NewEndpoint, NewNode,
    NodeRecord, Registry, RegistryError, Response, Sha256, TokenRecord, X25519Public,
};

pub const HASH_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const HASH_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
pub const T0: i64 = 1_000_000;

pub fn config() -> ClusterConfig {
    ClusterConfig {
        cluster_id: 7,
        name: "lab".into(),
        pod_pool: "10.128.0.0/22".parse().unwrap(),
        node_prefix_len: 24,
        ca_cert_pem: "ca".into(),
        legacy_ca_key_pem: "key".into(),
        created_at: T0,
    }
}

pub fn new_node(name: &str) -> NewNode {
    NewNode {
        name: name.into(),
        // The address tells the nodes apart (names are not addresses; no two nodes may
        // share an IP).
        rpc_addr: {
            let [hi, lo] = name_port(name).to_be_bytes();
            std::net::SocketAddr::from(([10, 0, hi, lo.max(1)], 7700))
        },
        tls_key_sha256: Sha256([0x00; 32]),
        x25519_public: X25519Public([0x11; 32]),
    }
}

/// A port from the node's name, so that every test node has its own address.
fn name_port(name: &str) -> u16 {
    name.bytes()
        .fold(0u16, |a, b| a.wrapping_mul(31).wrapping_add(u16::from(b)))
        % 1000
}

pub fn token(id: &str, hash: &str, max_uses: u32) -> TokenRecord {
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

pub fn gossip_key(id: u32) -> GossipKey {
    GossipKey {
        id,
        key_hex: "ab".repeat(32),
    }
}

pub fn bootstrapped() -> Registry {
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

pub fn admit(r: &mut Registry, token_id: &str, hash: &str, name: &str, now: i64) -> Response {
    r.apply(Command::AdmitNode {
        token_id: token_id.into(),
        presented_hash: hash.into(),
        node: new_node(name),
        now,
    })
}

/// Applies `cmd`, expects `expected` error, and checks the registry did not change.
pub fn refused(r: &mut Registry, cmd: Command, expected: fn(&RegistryError) -> bool) {
    let before = r.clone();
    match r.apply(cmd) {
        Response::Err(e) => assert!(expected(&e), "unexpected error: {e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(*r, before, "a refused command changed the registry");
}

/// An `AddEndpoint` command, stamped `T0 + 5`.
pub fn new_endpoint(
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

/// The endpoint of an `AddEndpoint` response, and whether it was created.
pub fn added(resp: Response) -> (EndpointRecord, bool) {
    match resp {
        Response::Endpoint { endpoint, created } => (endpoint, created),
        other => panic!("expected an endpoint, got {other:?}"),
    }
}

/// A hex hash fixture as a [`Sha256`].
pub fn sha(hex: &str) -> Sha256 {
    hex.parse().expect("64 hex digits")
}

/// A 30-day certificate record for `node`'s TLS key.
pub fn cert_for(node: &NewNode) -> CertRecord {
    CertRecord {
        serial: "0a1b2c".into(),
        not_before: T0,
        not_after: T0 + 30 * 86400,
        tls_key_sha256: node.tls_key_sha256,
    }
}

/// An `AdmitSignedNode` command at `T0`.
pub fn signed_cmd(
    token_id: &str,
    hash: &str,
    node: NewNode,
    node_id: u64,
    cert: CertRecord,
) -> Command {
    Command::AdmitSignedNode {
        token_id: token_id.into(),
        presented_hash: sha(hash),
        node,
        node_id,
        cert,
        now: T0,
    }
}

/// Admits `name` through a fresh single-use token with `AdmitSignedNode`, with a TLS key of
/// its own.
pub fn signed_node(r: &mut Registry, name: &str) -> NodeRecord {
    let token_id = format!("tok{name:0>3}");
    r.apply(Command::CreateToken {
        token: token(&token_id, HASH_B, 1),
    })
    .into_result()
    .expect("token");
    let mut node = new_node(name);
    node.tls_key_sha256 = Sha256([name.len() as u8 + 0x40; 32]);
    let next = r
        .precheck_admission(&token_id, &sha(HASH_B), &node, T0)
        .expect("precheck");
    let cert = cert_for(&node);
    match r.apply(signed_cmd(&token_id, HASH_B, node, next, cert)) {
        Response::Node(n) => n,
        other => panic!("admission refused: {other:?}"),
    }
}
