//! Root tests against the real kernel. Every test makes its own namespaces (unique
//! names: pid + counter), deleted in Drop even when the test panics, and runs its body
//! on a thread that has joined a test "node" namespace, so the agent's namespace (and
//! the machine's) is never touched and no traffic leaves namespaces made here.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::Ipv4Net;
use serde_json::Value;

use super::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips the test (with a note) when not root: netns and links need CAP_NET_ADMIN.
macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new(tag: &str) -> TestNetns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("mbt-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        TestNetns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NS -j ARGS...` parsed.
    fn ip_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-n", self.name.as_str(), "-j"];
        all.extend_from_slice(args);
        let out = run("ip", &all);
        serde_json::from_str(&out).unwrap_or(Value::Array(vec![]))
    }

    /// Names of the links in the namespace.
    fn link_names(&self) -> Vec<String> {
        let v = self.ip_json(&["link", "show"]);
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the links in it (and a veth's peer elsewhere).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `body` on a fresh thread inside `node` with its own current-thread runtime (the
/// way the agent would run in its own namespace). A panic in the body is re-raised here
/// after the thread ends, so the caller's TestNetns guards still drop.
fn in_node<F, Fut>(node: &TestNetns, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let file = std::fs::File::open(node.path()).expect("open node netns");
    let joined = std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns node");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(body());
    })
    .join();
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

fn spec(host: &str, ep: &TestNetns) -> EndpointLinkSpec {
    EndpointLinkSpec {
        host_ifname: host.to_string(),
        container_ifname: "eth0".to_string(),
        netns_path: ep.path(),
        address: Ipv4Addr::new(10, 128, 0, 5),
        gateway: Ipv4Addr::new(10, 128, 0, 1),
        mtu: 1400,
    }
}

#[test]
fn netdev_host_ifname_is_stable_and_short() {
    let a = host_ifname("abc", "eth0");
    assert_eq!(a, host_ifname("abc", "eth0"));
    assert_ne!(a, host_ifname("abc", "eth1"));
    // The NUL separator keeps ("ab", "ceth0") apart from ("abc", "eth0").
    assert_ne!(a, host_ifname("ab", "ceth0"));
    assert_eq!(a.len(), 12);
    assert!(a.starts_with("mb"));
    assert!(a[2..].chars().all(|c| c.is_ascii_hexdigit()));
    validate_ifname(&a).expect("host name is a valid ifname");
    assert!(validate_ifname("a-name-that-is-too-long").is_err());
    assert!(validate_ifname("").is_err());
    assert!(validate_ifname("a/b").is_err());
}

#[test]
fn netdev_endpoint_link_created_checked_deleted() {
    require_root!();
    let node = TestNetns::new("node");
    let ep = TestNetns::new("ep");
    let host = host_ifname(&format!("c-{}", ep.name), "eth0");
    let s = spec(&host, &ep);
    let ep_path = ep.path();
    in_node(&node, move || async move {
        let link = create_endpoint_link(&s).await.expect("create");
        let (idx, mac, mtu) = link_by_name(&s.host_ifname)
            .await
            .expect("lookup")
            .expect("host side exists");
        assert_eq!(idx, link.host_ifindex);
        assert_eq!(mac, link.host_mac);
        assert_eq!(mtu, 1400);
        assert_ne!(link.host_mac, [0; 6]);

        let (cidx, cmac, addrs) = container_link(&ep_path, "eth0")
            .await
            .expect("container lookup")
            .expect("container side exists");
        assert_eq!(cidx, link.container_ifindex);
        assert_eq!(cmac, link.container_mac);
        assert_eq!(
            addrs,
            vec!["10.128.0.5/32".parse::<Ipv4Net>().expect("literal")]
        );
        assert!(container_link(&ep_path, "eth9")
            .await
            .expect("lookup")
            .is_none());
    });

    // Container side, through iproute2's JSON.
    let l = ep.ip_json(&["link", "show", "eth0"]);
    assert_eq!(l[0]["mtu"], 1400);
    assert!(l[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP")));
    let lo = ep.ip_json(&["link", "show", "lo"]);
    assert!(lo[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP")));
    let routes = ep.ip_json(&["route", "show"]);
    let routes = routes.as_array().expect("routes array");
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "10.128.0.1" && r["dev"] == "eth0"),
        "default route missing: {routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "10.128.0.1" && r["dev"] == "eth0" && r["scope"] == "link"),
        "gateway link route missing: {routes:?}"
    );
    let host_link = node.ip_json(&["link", "show", &host]);
    let host_mac = host_link[0]["address"]
        .as_str()
        .expect("host mac")
        .to_string();
    assert_eq!(host_link[0]["mtu"], 1400);
    let neigh = ep.ip_json(&["neigh", "show", "dev", "eth0"]);
    assert!(
        neigh
            .as_array()
            .is_some_and(|n| n.iter().any(|e| e["dst"] == "10.128.0.1"
                && e["lladdr"] == host_mac.as_str()
                && e["state"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x == "PERMANENT")))),
        "permanent neighbour missing: {neigh:?}"
    );
    let v6 = run(
        "ip",
        &[
            "netns",
            "exec",
            &ep.name,
            "cat",
            "/proc/sys/net/ipv6/conf/eth0/disable_ipv6",
        ],
    );
    assert_eq!(v6.trim(), "1");

    // Host side: route to the endpoint /32, scope link.
    let hr = node.ip_json(&["route", "show"]);
    assert!(
        hr.as_array()
            .is_some_and(|a| a.iter().any(|r| r["dst"] == "10.128.0.5"
                && r["dev"] == host.as_str()
                && r["scope"] == "link")),
        "host route missing: {hr:?}"
    );

    let h2 = host.clone();
    in_node(&node, move || async move {
        assert!(delete_link(&h2).await.expect("delete"));
        assert!(!delete_link(&h2).await.expect("second delete"));
        assert!(link_by_name(&h2).await.expect("lookup").is_none());
    });
    assert_eq!(node.link_names(), vec!["lo"]);
    assert_eq!(ep.link_names(), vec!["lo"]);
}

#[test]
fn netdev_host_name_taken_leaves_nothing() {
    require_root!();
    let node = TestNetns::new("node");
    let ep = TestNetns::new("ep");
    let host = host_ifname("taken-host", "eth0");
    node.ip(&[
        "link", "add", &host, "type", "veth", "peer", "name", "other0",
    ]);
    let s = spec(&host, &ep);
    in_node(&node, move || async move {
        match create_endpoint_link(&s).await {
            Err(NetdevError::HostNameTaken { name }) => assert_eq!(name, s.host_ifname),
            other => panic!("expected HostNameTaken, got {other:?}"),
        }
    });
    let mut names = node.link_names();
    names.sort();
    let mut want = vec!["lo".to_string(), "other0".to_string(), host];
    want.sort();
    assert_eq!(names, want);
    assert_eq!(ep.link_names(), vec!["lo"]);
}

#[test]
fn netdev_container_name_taken_leaves_nothing() {
    require_root!();
    let node = TestNetns::new("node");
    let ep = TestNetns::new("ep");
    ep.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let host = host_ifname("taken-container", "eth0");
    let s = spec(&host, &ep);
    in_node(&node, move || async move {
        match create_endpoint_link(&s).await {
            Err(NetdevError::ContainerNameTaken { ifname, .. }) => assert_eq!(ifname, "eth0"),
            other => panic!("expected ContainerNameTaken, got {other:?}"),
        }
    });
    assert_eq!(node.link_names(), vec!["lo"]);
    let mut names = ep.link_names();
    names.sort();
    assert_eq!(names, vec!["eth0", "lo", "other0"]);
    // The existing eth0 was not touched (no address, still down).
    let l = ep.ip_json(&["addr", "show", "eth0"]);
    assert_eq!(l[0]["addr_info"].as_array().map(Vec::len), Some(0), "{l}");
    assert_eq!(l[0]["operstate"], "DOWN", "{l}");
}

#[test]
fn netdev_missing_netns_leaves_nothing() {
    require_root!();
    let node = TestNetns::new("node");
    let host = host_ifname("no-netns", "eth0");
    let missing = PathBuf::from(format!("/run/netns/mbt-missing-{}", std::process::id()));
    let not_ns = tempfile::NamedTempFile::new().expect("tempfile");
    let not_ns_path = not_ns.path().to_path_buf();
    in_node(&node, move || async move {
        for path in [missing, not_ns_path] {
            let s = EndpointLinkSpec {
                host_ifname: host.clone(),
                container_ifname: "eth0".into(),
                netns_path: path.clone(),
                address: Ipv4Addr::new(10, 128, 0, 7),
                gateway: Ipv4Addr::new(10, 128, 0, 1),
                mtu: 1450,
            };
            match create_endpoint_link(&s).await {
                Err(NetdevError::NoSuchNetns { path: p, .. }) => assert_eq!(p, path),
                other => panic!("expected NoSuchNetns for {}, got {other:?}", path.display()),
            }
            assert!(link_by_name(&host).await.expect("lookup").is_none());
            match container_link(&path, "eth0").await {
                Err(NetdevError::NoSuchNetns { .. }) => {}
                other => panic!("expected NoSuchNetns, got {other:?}"),
            }
        }
    });
    assert_eq!(node.link_names(), vec!["lo"]);
}

#[test]
fn netdev_failure_after_creation_rolls_back() {
    require_root!();
    let node = TestNetns::new("node");
    let ep = TestNetns::new("ep");
    let host = host_ifname("rollback", "eth0");
    let s = spec(&host, &ep);
    let mut bad = spec(&host, &ep);
    bad.gateway = Ipv4Addr::new(224, 0, 0, 1);
    // A failure after the pair exists and the container side is configured.
    super::endpoint::fault::inject(&host);
    in_node(&node, move || async move {
        match create_endpoint_link(&bad).await {
            Err(NetdevError::Invalid {
                what: "gateway", ..
            }) => {}
            other => panic!("expected an invalid gateway, got {other:?}"),
        }
        let err = create_endpoint_link(&s).await.expect_err("injected fault");
        assert!(err.to_string().contains("injected test fault"), "{err}");
    });
    assert_eq!(node.link_names(), vec!["lo"]);
    assert_eq!(ep.link_names(), vec!["lo"]);
}

#[test]
fn netdev_vxlan_is_external_and_kept() {
    require_root!();
    let node = TestNetns::new("node");
    let dump = node.name.clone();
    in_node(&node, move || async move {
        let (i1, m1) = ensure_vxlan("membrane_vx", 8472, Some(1450))
            .await
            .expect("first");
        let (i2, m2) = ensure_vxlan("membrane_vx", 8472, Some(1450))
            .await
            .expect("second");
        assert_eq!(i1, i2, "an existing device must be kept");
        assert_eq!(m1, m2);
        let (_, _, mtu) = link_by_name("membrane_vx")
            .await
            .expect("l")
            .expect("exists");
        assert_eq!(mtu, 1450);

        // Another port replaces it.
        let (i3, _) = ensure_vxlan("membrane_vx", 4789, None)
            .await
            .expect("other port");
        assert_ne!(i3, i1);

        // A non-VXLAN link with the name is refused and left alone.
        run(
            "ip",
            &[
                "-n", &dump, "link", "add", "notvx", "type", "veth", "peer", "name", "notvx-p",
            ],
        );
        match ensure_vxlan("notvx", 8472, None).await {
            Err(NetdevError::NotVxlan { kind, .. }) => assert_eq!(kind, "veth"),
            other => panic!("expected NotVxlan, got {other:?}"),
        }
    });
    let l = node.ip_json(&["-d", "link", "show", "membrane_vx"]);
    let data = &l[0]["linkinfo"]["info_data"];
    assert_eq!(l[0]["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(data["external"], true, "{data}");
    assert_eq!(data["learning"], false, "{data}");
    assert_eq!(data["port"], 4789, "{data}");
    assert!(l[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP")));
    assert!(node.link_names().iter().any(|n| n == "notvx"));
}

#[test]
fn netdev_masquerade_table_appears_and_disappears() {
    require_root!();
    let node = TestNetns::new("node");
    let name = node.name.clone();
    in_node(&node, move || async move {
        let cidr: Ipv4Net = "10.128.3.0/24".parse().expect("literal");
        let pool: Ipv4Net = "10.128.0.0/9".parse().expect("literal");
        ensure_masquerade("membrane", cidr, pool, true).expect("enable");
        // Twice is fine and still one rule (the table is replaced, not appended to).
        ensure_masquerade("ip membrane", cidr, pool, true).expect("enable again");
        let listed = run("nft", &["list", "table", "ip", "membrane"]);
        assert!(listed.contains("hook postrouting"), "{listed}");
        assert_eq!(
            listed.matches("masquerade").count(),
            1,
            "one masquerade rule expected: {listed}"
        );
        assert!(
            listed.contains("ip saddr 10.128.3.0/24 ip daddr != 10.128.0.0/9 masquerade"),
            "{listed}"
        );
        ensure_masquerade("membrane", cidr, pool, false).expect("disable");
        let st = Command::new("nft")
            .args(["list", "table", "ip", "membrane"])
            .output()
            .expect("nft");
        assert!(
            !st.status.success(),
            "table still there after disable in {name}"
        );
        // Disabling an absent table is fine.
        ensure_masquerade("membrane", cidr, pool, false).expect("disable again");
        assert!(ensure_masquerade("bad name;", cidr, pool, true).is_err());
    });
}

#[test]
fn netdev_underlay_mtu_and_sysctl() {
    require_root!();
    let node = TestNetns::new("node");
    let n = node.name.clone();
    in_node(&node, move || async move {
        // Only lo: nothing to take the MTU from.
        match underlay_mtu().await {
            Err(NetdevError::NoUnderlay) => {}
            other => panic!("expected NoUnderlay, got {other:?}"),
        }
        // Like the lab hosts: one interface with a /24 and no default route.
        // (veth pairs: this kernel has no dummy module.)
        // A device without an address (like an endpoint host side) is not the underlay,
        // even when it comes first.
        run(
            "ip",
            &[
                "-n", &n, "link", "add", "a0", "mtu", "1300", "type", "veth", "peer", "name", "a1",
            ],
        );
        run("ip", &["-n", &n, "link", "set", "a0", "up"]);
        run(
            "ip",
            &[
                "-n", &n, "link", "add", "under0", "mtu", "9000", "type", "veth", "peer", "name",
                "under1",
            ],
        );
        run(
            "ip",
            &["-n", &n, "addr", "add", "10.99.0.2/24", "dev", "under0"],
        );
        run("ip", &["-n", &n, "link", "set", "under0", "up"]);
        assert_eq!(underlay_mtu().await.expect("mtu"), 9000);
        // With a default route, its device wins.
        run(
            "ip",
            &[
                "-n", &n, "link", "add", "up1", "mtu", "1500", "type", "veth", "peer", "name",
                "up2",
            ],
        );
        run(
            "ip",
            &["-n", &n, "addr", "add", "10.98.0.2/24", "dev", "up1"],
        );
        run("ip", &["-n", &n, "link", "set", "up2", "up"]);
        run("ip", &["-n", &n, "link", "set", "up1", "up"]);
        run(
            "ip",
            &[
                "-n",
                &n,
                "route",
                "add",
                "default",
                "via",
                "10.98.0.1",
                "dev",
                "up1",
            ],
        );
        assert_eq!(underlay_mtu().await.expect("mtu"), 1500);
        assert_eq!(default_endpoint_mtu().await.expect("mtu"), 1450);

        // /proc/sys/net belongs to this thread's namespace (the test node), not the host's.
        set_sysctl("net.ipv4.ip_forward", "1").expect("set");
        assert_eq!(get_sysctl("net/ipv4/ip_forward").expect("get"), "1");
        assert!(set_sysctl("net/../../etc", "1").is_err());
    });
}
