use std::time::Duration;

use membrane_crypto::ca::parse_ca_hash;
use membrane_crypto::keys::NodeKeys;
use membrane_jepsen::observe::{scrape, value};
use membrane_jepsen::{in_netns, require_root, Cluster};

use crate::support::{anonymous_channel, last_log_index};
use membrane_proto::v1::join_client::JoinClient;
use membrane_proto::v1::JoinRequest;
use tonic::Code;

/// A well-formed token that is not the cluster's: a random id, or (every tenth) the real
/// id with a random secret.
fn random_token(real_id: &str, k: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let pick = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[rand_index(ALPHABET.len())] as char)
            .collect()
    };
    let id = if k.is_multiple_of(10) {
        real_id.to_string()
    } else {
        pick(6)
    };
    format!("{id}.{}", pick(16))
}

fn rand_index(n: usize) -> usize {
    let mut b = [0u8; 8];
    getrandom(&mut b);
    (u64::from_le_bytes(b) % n as u64) as usize
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("/dev/urandom");
}

/// 1,000 joins with random well-formed tokens write nothing to Raft: the first few are
/// refused for the token (all with one message, whether the id exists or not), the rest by
/// the per-address limit. A join whose advertised address is not its source, and a forged
/// "forwarded by a member" header, are refused too. A real join from another address then
/// succeeds, and the metrics count every refusal by reason.
#[test]
fn t21_thousand_random_joins_leave_the_raft_log_unchanged() -> anyhow::Result<()> {
    require_root()?;
    let (c, init) = Cluster::init("joinguard", 3)?;
    c.start_first()?;
    // Let the bootstrap's own entries settle before taking the baseline.
    std::thread::sleep(Duration::from_secs(2));
    let before = last_log_index(&c)?;
    let metrics_before = scrape(&c, 1)?;

    let addr = c.lab().host(1).rpc_addr().to_string();
    let pin = parse_ca_hash(c.ca_hash())?;
    let h2 = c.lab().host(2).clone();
    let h3_addr = c.lab().host(3).rpc_addr().to_string();
    let tmp = tempfile::tempdir()?;
    let key_dir = tmp.path().to_path_buf();
    let real_id = init.token[..6].to_string();
    let real_token = init.token.clone();

    let netns = h2.netns().to_string();
    let (codes, messages) = in_netns(&netns, move || -> anyhow::Result<_> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let ch = anonymous_channel(addr, pin).await?;
            let keys = NodeKeys::load_or_create(&key_dir)?;
            let request = |token: String, rpc_addr: String| JoinRequest {
                token,
                name: "intruder".into(),
                rpc_addr,
                csr_der: keys.csr_der("intruder").unwrap(),
                x25519_public: keys.x25519_public().to_vec(),
            };
            let mut client = JoinClient::new(ch);

            // A member-only header from a peer without a member's certificate.
            let mut forged = tonic::Request::new(request(
                random_token(&real_id, 1),
                h2.rpc_addr().to_string(),
            ));
            forged
                .metadata_mut()
                .insert("x-membrane-join-source", "192.0.2.1".parse().unwrap());
            let err = client.join(forged).await.unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
            assert!(err.message().contains("current member"), "{err:?}");

            // Another host's address advertised from this one: counted as a failure.
            let err = client
                .join(request(real_token, h3_addr.clone()))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            assert!(
                err.message()
                    .contains("not the address this join comes from"),
                "{err:?}"
            );

            let mut codes = Vec::new();
            let mut messages = std::collections::BTreeSet::new();
            for k in 0..1000 {
                let err = client
                    .join(request(
                        random_token(&real_id, k),
                        h2.rpc_addr().to_string(),
                    ))
                    .await
                    .expect_err("a random token must be refused");
                if err.code() == Code::PermissionDenied {
                    messages.insert(err.message().to_string());
                }
                codes.push(err.code());
            }
            Ok((codes, messages))
        })
    })??;

    // Default limit: 5 failures a minute per address; one was the address mismatch.
    let denied = codes
        .iter()
        .filter(|c| **c == Code::PermissionDenied)
        .count();
    let limited = codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    assert_eq!((denied, limited), (4, 996), "{codes:?}");
    assert!(codes[..4].iter().all(|c| *c == Code::PermissionDenied));
    // The real id with a wrong secret (k = 0) reads like an unknown id.
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(!messages.iter().next().unwrap().contains(&init.token[..6]));

    assert_eq!(
        last_log_index(&c)?,
        before,
        "refused joins must not reach the Raft log"
    );

    let m = scrape(&c, 1)?;
    let d = |series: &str| value(&m, series) - value(&metrics_before, series);
    assert_eq!(
        d("membrane_join_refused_total{reason=\"rate_limited\"}"),
        996.0
    );
    assert_eq!(d("membrane_join_refused_total{reason=\"token\"}"), 4.0);
    assert_eq!(d("membrane_join_refused_total{reason=\"address\"}"), 1.0);

    // A real join from another address is not held back by host 2's failures.
    c.join(3, &init.token)?;
    assert!(last_log_index(&c)? > before);
    let nodes = c.cli_json(1, &["node", "list"])?;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 2, "{nodes}");
    Ok(())
}

/// With the limit turned off (`--join-failures-per-minute 0`), every one of 1,000 random
/// tokens is judged by the precheck and refused, still without a log entry; the token file
/// then joins a node.
#[test]
fn t22_without_a_limit_every_random_join_is_refused_by_the_precheck() -> anyhow::Result<()> {
    require_root()?;
    let (mut c, init) = Cluster::init("joinprecheck", 2)?;
    c.set_agent_args(&["--join-failures-per-minute", "0"]);
    c.start_first()?;
    std::thread::sleep(Duration::from_secs(2));
    let before = last_log_index(&c)?;

    let addr = c.lab().host(1).rpc_addr().to_string();
    let pin = parse_ca_hash(c.ca_hash())?;
    let h2 = c.lab().host(2).clone();
    let tmp = tempfile::tempdir()?;
    let key_dir = tmp.path().to_path_buf();
    let real_id = init.token[..6].to_string();
    let netns = h2.netns().to_string();
    let codes = in_netns(&netns, move || -> anyhow::Result<Vec<Code>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut client = JoinClient::new(anonymous_channel(addr, pin).await?);
            let keys = NodeKeys::load_or_create(&key_dir)?;
            let csr = keys.csr_der("intruder")?;
            let mut codes = Vec::new();
            for k in 0..1000 {
                let err = client
                    .join(JoinRequest {
                        token: random_token(&real_id, k),
                        name: "intruder".into(),
                        rpc_addr: h2.rpc_addr().to_string(),
                        csr_der: csr.clone(),
                        x25519_public: keys.x25519_public().to_vec(),
                    })
                    .await
                    .expect_err("a random token must be refused");
                codes.push(err.code());
            }
            Ok(codes)
        })
    })??;
    assert!(
        codes.iter().all(|c| *c == Code::PermissionDenied),
        "{codes:?}"
    );
    assert_eq!(last_log_index(&c)?, before);

    // The real token, from a file only root can read, joins host 2.
    let token_file = c.lab().dir().join("join-token");
    std::fs::write(&token_file, format!("{}\n", init.token))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    let mut args = c.join_args(2, &init.token, c.ca_hash());
    let pos = args.iter().position(|a| a == "--token").unwrap();
    args[pos] = "--token-file".into();
    args[pos + 1] = token_file.display().to_string();
    c.lab().start(2, &args)?;
    membrane_jepsen::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        if !c.lab().is_running(2)? {
            anyhow::bail!("agent on host 2 exited: {}", c.log_tail(2));
        }
        Ok(c.status(2).is_ok())
    })?;
    assert!(last_log_index(&c)? > before);

    // The local API sockets are root's alone (no --socket-group), from the start.
    c.wait_plugin_socket(2)?;
    for sock in [c.lab().host(2).socket(), c.lab().host(2).plugin_socket()] {
        let meta = std::fs::symlink_metadata(&sock)?;
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            sock.display()
        );
    }
    Ok(())
}
