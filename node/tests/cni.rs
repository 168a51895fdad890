//! Runs the built `membrane-cni` binary as a runtime would: config on stdin, CNI_* in the
//! environment. Once with no agent (ADD -> 11, DEL -> queued), once against a fake agent
//! serving the plugin API on a Unix socket.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use membrane_proto::v1 as pb;
use membrane_proto::v1::plugin_server::{Plugin, PluginServer};
use serde_json::Value;

struct Out {
    ok: bool,
    stdout: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

fn cni(vars: &[(&str, &str)], stdin: &str) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_membrane-cni"))
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run membrane-cni");
    // The plugin may refuse bad environment before it reads its config, closing stdin
    // first: a broken pipe here is that refusal, and its answer is still on stdout.
    let written = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    if let Err(e) = written {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write config: {e}"
        );
    }
    let out = child.wait_with_output().unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    }
}

fn conf(socket: &Path, queue: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0", "name": "membrane", "type": "membrane-cni",
        "socket": socket, "queueDir": queue, "labels": {"app": "web"}
    })
    .to_string()
}

/// A network namespace other than ours, held by a child process; None where unshare is
/// unavailable (then the tests that need one are skipped).
struct OtherNetns {
    child: std::process::Child,
    path: String,
}

impl OtherNetns {
    fn new() -> Option<Self> {
        let own = std::fs::read_link("/proc/self/ns/net").ok()?;
        // -r maps us to root in a user namespace, so this works unprivileged too.
        let mut child = Command::new("unshare")
            .args(["-rn", "sleep", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let path = format!("/proc/{}/ns/net", child.id());
        for _ in 0..100 {
            match std::fs::read_link(&path) {
                Ok(ns) if ns != own => return Some(OtherNetns { child, path }),
                _ => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
            if child.try_wait().ok().flatten().is_some() {
                return None;
            }
        }
        let _ = child.kill();
        None
    }
}

impl Drop for OtherNetns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn version_prints_the_supported_versions() {
    let out = cni(&[("CNI_COMMAND", "VERSION")], "");
    assert!(out.ok);
    assert_eq!(
        out.stdout,
        r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}"#
    );
}

#[test]
fn without_an_agent_add_is_try_again_and_del_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("plugin.sock");
    let queue = dir.path().join("queue");
    let conf = conf(&socket, &queue);

    // A netns that does not exist: code 3, before the agent would be asked.
    let gone = dir.path().join("netns-gone").display().to_string();
    let vars = |netns: &str| {
        vec![
            ("CNI_COMMAND", "ADD".to_string()),
            ("CNI_CONTAINERID", "ctr1".to_string()),
            ("CNI_NETNS", netns.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/opt/cni/bin".to_string()),
        ]
    };
    let owned = vars(&gone);
    let v: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = cni(&v, &conf);
    assert!(!out.ok);
    assert_eq!(out.json()["code"], 3, "{}", out.stdout);
    assert_eq!(out.json()["cniVersion"], "1.0.0");

    if let Some(ns) = OtherNetns::new() {
        let owned = vars(&ns.path);
        let v: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = cni(&v, &conf);
        assert!(!out.ok);
        let j = out.json();
        assert_eq!(j["code"], 11, "{}", out.stdout);
        assert!(j["msg"].as_str().unwrap().contains("not running"), "{j}");
    } else {
        eprintln!("skipping ADD -> 11: cannot create a network namespace (unshare -rn)");
    }

    // DEL: queued, success, no output; twice is still one queued delete.
    for _ in 0..2 {
        let out = cni(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "ctr1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", &gone),
            ],
            &conf,
        );
        assert!(out.ok, "{}", out.stdout);
        assert_eq!(out.stdout, "");
    }
    let queued = membrane::cni::read_queue(&queue);
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].1.container_id, "ctr1");
    assert_eq!(queued[0].1.ifname, "eth0");
    assert_eq!(queued[0].1.netns, gone);
}

#[test]
fn bad_input_gets_the_spec_codes() {
    let dir = tempfile::tempdir().unwrap();
    let conf = conf(&dir.path().join("s"), &dir.path().join("q"));
    let add = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_IFNAME", "eth0"),
    ];
    // (environment, stdin, expected code)
    type Case<'a> = (Vec<(&'a str, &'a str)>, String, u64);
    let cases: Vec<Case> = vec![
        (add.to_vec(), "{not json".into(), 6),
        (add.to_vec(), "".into(), 7),
        (
            add.to_vec(),
            r#"{"cniVersion":"0.1.0","name":"m","type":"t"}"#.into(),
            1,
        ),
        (vec![("CNI_COMMAND", "FROB")], conf.clone(), 4),
        (add[..3].to_vec(), conf.clone(), 4),
        (
            [add.to_vec(), vec![("CNI_ARGS", "BOGUS=1")]].concat(),
            conf.clone(),
            4,
        ),
    ];
    for (vars, stdin, code) in cases {
        let out = cni(&vars, &stdin);
        assert!(!out.ok, "{vars:?}");
        assert_eq!(out.json()["code"], code, "{vars:?} {stdin}: {}", out.stdout);
    }
}

/// A fake agent: records requests, answers as plugin.proto says.
#[derive(Clone, Default)]
struct FakeAgent {
    adds: Arc<Mutex<Vec<pb::AddEndpointRequest>>>,
    dels: Arc<Mutex<Vec<pb::DelEndpointRequest>>>,
}

fn endpoint_answer(netns: &str, ifname: &str) -> pb::AddEndpointResponse {
    pb::AddEndpointResponse {
        endpoint: None,
        interfaces: vec![
            pb::EndpointInterface {
                name: "mb0123456789".into(),
                mac: "02:00:00:00:00:01".into(),
                sandbox: String::new(),
            },
            pb::EndpointInterface {
                name: ifname.into(),
                mac: "02:00:00:00:00:02".into(),
                sandbox: netns.into(),
            },
        ],
        ips: vec![pb::EndpointIp {
            address: "10.128.0.5/32".into(),
            gateway: "10.128.0.1".into(),
            interface: 1,
        }],
        routes: vec![pb::EndpointRoute {
            dst: "0.0.0.0/0".into(),
            gw: "10.128.0.1".into(),
        }],
        mtu: 1450,
    }
}

#[tonic::async_trait]
impl Plugin for FakeAgent {
    async fn add_endpoint(
        &self,
        request: tonic::Request<pb::AddEndpointRequest>,
    ) -> Result<tonic::Response<pb::AddEndpointResponse>, tonic::Status> {
        let r = request.into_inner();
        self.adds.lock().unwrap().push(r.clone());
        if r.container_id == "taken" {
            return Err(tonic::Status::already_exists("eth0 is taken in the netns"));
        }
        Ok(tonic::Response::new(endpoint_answer(&r.netns, &r.ifname)))
    }
    async fn del_endpoint(
        &self,
        request: tonic::Request<pb::DelEndpointRequest>,
    ) -> Result<tonic::Response<pb::DelEndpointResponse>, tonic::Status> {
        let r = request.into_inner();
        self.dels.lock().unwrap().push(r.clone());
        if r.container_id == "unknown" {
            return Err(tonic::Status::not_found("no such endpoint"));
        }
        Ok(tonic::Response::new(pb::DelEndpointResponse {
            deleted: true,
        }))
    }
    async fn check_endpoint(
        &self,
        request: tonic::Request<pb::CheckEndpointRequest>,
    ) -> Result<tonic::Response<pb::AddEndpointResponse>, tonic::Status> {
        let r = request.into_inner();
        Ok(tonic::Response::new(endpoint_answer(&r.netns, &r.ifname)))
    }
    async fn list_endpoints(
        &self,
        _: tonic::Request<pb::ListEndpointsRequest>,
    ) -> Result<tonic::Response<pb::EndpointListResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::EndpointListResponse::default()))
    }
}

/// Serves the fake agent on `socket` from a background thread until the test ends.
fn serve(socket: PathBuf, agent: FakeAgent) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::UnixListener::bind(&socket).unwrap();
            ready_tx.send(()).unwrap();
            tonic::transport::Server::builder()
                .add_service(PluginServer::new(agent))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    ready_rx.recv().unwrap();
}

#[test]
fn against_an_agent_add_check_and_del_forward_and_format() {
    let Some(ns) = OtherNetns::new() else {
        eprintln!("skipping: cannot create a network namespace (unshare -rn)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("plugin.sock");
    let agent = FakeAgent::default();
    serve(socket.clone(), agent.clone());
    let conf_text = serde_json::json!({
        "cniVersion": "0.4.0", "name": "membrane", "type": "membrane-cni",
        "socket": socket, "queueDir": dir.path().join("q"),
        "labels": {"app": "conf", "env": "prod"},
        "runtimeConfig": {"labels": {"app": "web"}}
    })
    .to_string();
    let vars = |cmd: &'static str, id: &'static str| {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_NETNS", ns.path.clone()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0".to_string(),
            ),
        ]
    };
    let run = |cmd, id, stdin: &str| {
        let owned = vars(cmd, id);
        let v: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        cni(&v, stdin)
    };

    let out = run("ADD", "ctr1", &conf_text);
    assert!(out.ok, "{}", out.stdout);
    let result = out.json();
    assert_eq!(
        result,
        serde_json::json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "mb0123456789", "mac": "02:00:00:00:00:01"},
                {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": ns.path}
            ],
            "ips": [{"version": "4", "address": "10.128.0.5/32", "gateway": "10.128.0.1",
                     "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.128.0.1"}],
            "dns": {}
        })
    );
    let sent = agent.adds.lock().unwrap()[0].clone();
    assert_eq!(sent.container_id, "ctr1");
    assert_eq!(sent.netns, ns.path);
    let labels: std::collections::BTreeMap<_, _> = sent.labels.into_iter().collect();
    let want: std::collections::BTreeMap<String, String> =
        [("app", "web"), ("env", "prod"), ("namespace", "default")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(labels, want);

    // CHECK with the ADD result as prevResult: success, no output.
    let mut with_prev: Value = serde_json::from_str(&conf_text).unwrap();
    with_prev["prevResult"] = result.clone();
    let out = run("CHECK", "ctr1", &with_prev.to_string());
    assert!(out.ok, "{}", out.stdout);
    assert_eq!(out.stdout, "");
    // CHECK against a prevResult with another address: 102.
    with_prev["prevResult"]["ips"][0]["address"] = "10.128.0.99/32".into();
    let out = run("CHECK", "ctr1", &with_prev.to_string());
    assert_eq!(out.json()["code"], 102, "{}", out.stdout);

    // The agent's ALREADY_EXISTS is 101.
    let out = run("ADD", "taken", &conf_text);
    assert!(!out.ok);
    assert_eq!(out.json()["code"], 101, "{}", out.stdout);

    // DEL forwards; an unknown endpoint is still a success.
    for id in ["ctr1", "unknown"] {
        let out = run("DEL", id, &conf_text);
        assert!(out.ok, "{id}: {}", out.stdout);
        assert_eq!(out.stdout, "");
    }
    assert_eq!(agent.dels.lock().unwrap().len(), 2);
    assert!(membrane::cni::read_queue(&dir.path().join("q")).is_empty());
}
