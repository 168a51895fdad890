//! `membrane-cni`: a CNI 1.0.0 plugin that forwards ADD/DEL/CHECK to the agent's plugin
//! socket (plugin.proto). See docs/cni.md.
//!
//! Everything that can be checked without the agent is checked first (environment, config,
//! CNI_ARGS, labels, the netns), so a bad request never reaches it. The pure parts live in
//! the submodules; this file holds the IO: environment, stdin/stdout, the netns check and
//! the socket.

pub mod args;
pub mod config;
pub mod env;
pub mod error;
pub mod labels;
pub mod queue;
pub mod result;
pub mod spec;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use membrane_proto::v1 as pb;
use membrane_proto::v1::plugin_client::PluginClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use config::{NetConf, Strictness};
use env::Invocation;
use error::{CniError, ErrorCode};
use spec::{Command, Version, VersionInfo};

pub use queue::{complete, enqueue, read_queue, QueuedDelete};

/// Connecting is local; a slow connect means a stuck agent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// ADD returns once veth, routes and BPF are live, and may wait for the registry.
const ADD_TIMEOUT: Duration = Duration::from_secs(120);
const DEL_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Entry point of the binary: runs the command from the process environment and stdin,
/// prints the result or the CNI error JSON on stdout.
pub fn main() -> ExitCode {
    let lookup = |k: &str| std::env::var_os(k);
    let mut stdin = std::io::stdin().lock();
    let (outcome, version) = run(&lookup, &mut stdin);
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(out) => {
            if let Some(text) = out {
                if writeln!(stdout, "{text}")
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The runtime reads the error from stdout; stderr goes to its log, for operators.
            eprintln!("membrane-cni: {}", e.msg);
            let _ = writeln!(stdout, "{}", e.to_json(&version));
            let _ = stdout.flush();
            ExitCode::FAILURE
        }
    }
}

/// Runs one invocation: the text to print on success, or the error, and the cniVersion to
/// write an error in.
pub fn run(
    lookup: &dyn Fn(&str) -> Option<OsString>,
    stdin: &mut dyn Read,
) -> (Result<Option<String>, CniError>, String) {
    let command = match env::command(lookup) {
        Ok(c) => c,
        Err(e) => return (Err(e), spec::CURRENT_VERSION.into()),
    };
    match command {
        // VERSION needs no config; not reading stdin also keeps it from blocking when run
        // by hand.
        Command::Version => {
            let text = serde_json::to_string(&VersionInfo::ours()).unwrap_or_default();
            return (Ok(Some(text)), spec::CURRENT_VERSION.into());
        }
        Command::Status | Command::Gc => {
            let name = if command == Command::Status {
                "STATUS"
            } else {
                "GC"
            };
            return (
                Err(CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!(
                        "{name} is a CNI 1.1.0 command; membrane-cni implements CNI 1.0.0, \
                         so set \"cniVersion\" to 1.0.0 or lower"
                    ),
                )),
                spec::CURRENT_VERSION.into(),
            );
        }
        _ => {}
    }
    let mut input = Vec::new();
    if let Err(e) = stdin.read_to_end(&mut input) {
        let err = CniError::io(format!(
            "cannot read the network configuration from stdin: {e}"
        ));
        return (Err(err), spec::CURRENT_VERSION.into());
    }
    let version = config::error_version(&input);
    (dispatch(command, lookup, &input), version)
}

fn dispatch(
    command: Command,
    lookup: &dyn Fn(&str) -> Option<OsString>,
    input: &[u8],
) -> Result<Option<String>, CniError> {
    let strictness = if command == Command::Del {
        Strictness::DeleteOnly
    } else {
        Strictness::Full
    };
    let conf = config::parse(input, strictness)?;
    if command == Command::Check && conf.version < Version::V0_4_0 {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "CHECK needs cniVersion 0.4.0 or later, the config has {}; raise \"cniVersion\"",
                conf.cni_version
            ),
        ));
    }
    let inv = env::invocation(command, lookup)?;
    match command {
        Command::Add => add(&conf, &inv).map(Some),
        Command::Del => del(&conf, &inv).map(|()| None),
        Command::Check => check(&conf, &inv).map(|()| None),
        Command::Version | Command::Status | Command::Gc => Ok(None),
    }
}

fn add(conf: &NetConf, inv: &Invocation) -> Result<String, CniError> {
    let cni_args = args::parse(&inv.cni_args)?;
    let labels = labels::merge(
        &conf.labels,
        &cni_args.labels,
        &conf.args_labels,
        &conf.runtime_labels,
    );
    labels::require_some(&labels)?;
    check_netns(&inv.netns)?;

    let request = pb::AddEndpointRequest {
        container_id: inv.container_id.clone(),
        netns: inv.netns.clone(),
        ifname: inv.ifname.clone(),
        labels: labels.into_iter().collect(),
    };
    let response = block_on(async {
        let mut client = match connect(&conf.socket).await {
            Ok(c) => c,
            Err(e) => return Err(e.into_error("add", &conf.socket)),
        };
        let mut req = tonic::Request::new(request);
        req.set_timeout(ADD_TIMEOUT);
        call(ADD_TIMEOUT, client.add_endpoint(req))
            .await
            .map_err(|s| CniError::from_status("add", &conf.socket.display().to_string(), &s))
    })??;
    let ours = result::from_agent(&response, &inv.netns, &inv.ifname)?;
    let out = result::merge_prev(conf.prev_result.clone(), ours, conf.dns.clone());
    Ok(out.in_version(&conf.cni_version).to_json())
}

fn del(conf: &NetConf, inv: &Invocation) -> Result<(), CniError> {
    let request = pb::DelEndpointRequest {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        netns: inv.netns.clone(),
    };
    let outcome = block_on(async {
        let mut client = match connect(&conf.socket).await {
            Ok(c) => c,
            Err(e) => return Err(e),
        };
        let mut req = tonic::Request::new(request);
        req.set_timeout(DEL_CHECK_TIMEOUT);
        Ok(call(DEL_CHECK_TIMEOUT, client.del_endpoint(req)).await)
    })?;
    match outcome {
        Ok(Ok(_)) => Ok(()),
        // An unknown endpoint is already deleted: DEL is idempotent.
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(()),
        Ok(Err(s)) => Err(CniError::from_status(
            "delete",
            &conf.socket.display().to_string(),
            &s,
        )),
        Err(ConnectError::NotRunning(why)) => {
            let del = QueuedDelete::new(&inv.container_id, &inv.ifname, &inv.netns, &conf.name);
            let path = enqueue(&conf.queue_dir, &del).map_err(|e| {
                CniError::io(format!(
                    "the membrane agent is not running ({why}) and the delete cannot be queued \
                     in {}: {e}; start the agent or make the directory writable",
                    conf.queue_dir.display()
                ))
            })?;
            eprintln!(
                "membrane-cni: agent not running ({why}); queued the delete as {}",
                path.display()
            );
            Ok(())
        }
        Err(e) => Err(e.into_error("delete", &conf.socket)),
    }
}

fn check(conf: &NetConf, inv: &Invocation) -> Result<(), CniError> {
    check_netns(&inv.netns)?;
    let request = pb::CheckEndpointRequest {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        netns: inv.netns.clone(),
    };
    let response = block_on(async {
        let mut client = match connect(&conf.socket).await {
            Ok(c) => c,
            Err(e) => return Err(e.into_error("check", &conf.socket)),
        };
        let mut req = tonic::Request::new(request);
        req.set_timeout(DEL_CHECK_TIMEOUT);
        call(DEL_CHECK_TIMEOUT, client.check_endpoint(req))
            .await
            .map_err(|s| CniError::from_status("check", &conf.socket.display().to_string(), &s))
    })??;
    let actual = result::from_agent(&response, &inv.netns, &inv.ifname)?;
    match &conf.prev_result {
        Some(prev) => result::check_against_prev(prev, &actual),
        None => Ok(()),
    }
}

/// Awaits a call with a deadline of our own: the grpc-timeout header set on the request is
/// only a hint the server may ignore. Expiry is DEADLINE_EXCEEDED, i.e. "try again later".
async fn call<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {} s",
            timeout.as_secs()
        ))),
    }
}

/// CNI_NETNS must exist and be a namespace file other than our own network namespace
/// (see [`crate::netdev::check_netns_path`]).
fn check_netns(netns: &str) -> Result<(), CniError> {
    use crate::netdev::NetnsProblem;
    crate::netdev::check_netns_path(std::path::Path::new(netns)).map_err(|p| match p {
        NetnsProblem::Missing => CniError::new(
            ErrorCode::UnknownContainer,
            format!(
                "network namespace {netns} (CNI_NETNS) does not exist; the sandbox is gone or \
                 was never created, so recreate it"
            ),
        ),
        NetnsProblem::Unreadable(e) => CniError::io(format!(
            "cannot inspect network namespace {netns} (CNI_NETNS): {e}; run membrane-cni as root"
        )),
        NetnsProblem::NotANamespace { fs_type } => CniError::new(
            ErrorCode::UnknownContainer,
            format!(
                "{netns} (CNI_NETNS) is not a network namespace (filesystem type {fs_type:#x}); pass a \
                 namespace like /run/netns/NAME or /proc/PID/ns/net"
            ),
        ),
        NetnsProblem::OwnNamespace => CniError::env(format!(
            "{netns} (CNI_NETNS) is the node's own network namespace; pass the container's"
        )),
    })
}

/// Why there is no connection to the agent.
enum ConnectError {
    /// No socket, or a socket nobody listens on: the agent is not running.
    NotRunning(String),
    /// The socket could not be opened for another reason (permissions, ...).
    Io(std::io::Error),
    /// Connected, but the gRPC channel did not come up: the agent is stuck or starting.
    Handshake(String),
}

impl ConnectError {
    fn into_error(self, what: &str, socket: &Path) -> CniError {
        let socket = socket.display();
        match self {
            ConnectError::NotRunning(why) => CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "the membrane agent is not running ({why} at {socket}); start it \
                     (systemctl start membrane), the runtime retries the {what}"
                ),
            ),
            ConnectError::Io(e) => CniError::io(format!(
                "cannot connect to the membrane agent at {socket}: {e}; run membrane-cni as \
                 root, or fix \"socket\" in the network config"
            )),
            ConnectError::Handshake(why) => CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "the membrane agent at {socket} accepted the connection but did not answer \
                     ({why}); it may be starting, so the runtime should retry the {what}"
                ),
            ),
        }
    }
}

async fn connect(socket: &Path) -> Result<PluginClient<Channel>, ConnectError> {
    // Connect here rather than in the connector, so the io::Error (not found, refused) is
    // ours to inspect instead of buried in a transport error.
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(socket)).await {
        Err(_) => return Err(ConnectError::Handshake("connect timed out".into())),
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound => ConnectError::NotRunning("no socket".into()),
                std::io::ErrorKind::ConnectionRefused => {
                    ConnectError::NotRunning("connection refused".into())
                }
                _ => ConnectError::Io(e),
            })
        }
    };
    let first = Arc::new(Mutex::new(Some(stream)));
    let path: PathBuf = socket.to_path_buf();
    let connector = tower::service_fn(move |_: http::Uri| {
        let first = first.clone();
        let path = path.clone();
        async move {
            // The first connection is the one made above; a reconnect dials again.
            let taken = first.lock().ok().and_then(|mut s| s.take());
            let stream = match taken {
                Some(s) => s,
                None => UnixStream::connect(&path).await?,
            };
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is required by tonic but unused: the connector ignores it.
    let channel = Endpoint::from_static("http://membrane-plugin.sock")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(connector)
        .await
        .map_err(|e| ConnectError::Handshake(error_chain(&e)))?;
    Ok(PluginClient::new(channel))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// One short-lived invocation: a current-thread runtime is enough and starts fastest.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T, CniError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::io(format!("cannot start the async runtime: {e}")))?;
    Ok(rt.block_on(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> (Result<Option<String>, CniError>, String) {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| map.get(k).map(OsString::from);
        run(&lookup, &mut stdin.as_bytes())
    }

    fn conf(dir: &Path) -> String {
        format!(
            r#"{{"cniVersion":"0.4.0","name":"membrane","type":"membrane-cni",
                "socket":"{}/absent.sock","queueDir":"{}/q","labels":{{"app":"web"}}}}"#,
            dir.display(),
            dir.display()
        )
    }

    #[test]
    fn version_needs_no_stdin() {
        let (out, _) = run_with(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(
            out.unwrap().unwrap(),
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}"#
        );
    }

    #[test]
    fn status_and_gc_are_refused_cleanly() {
        for cmd in ["STATUS", "GC"] {
            let (out, _) = run_with(&[("CNI_COMMAND", cmd)], "");
            let e = out.unwrap_err();
            assert_eq!(e.code, ErrorCode::IncompatibleVersion);
            assert!(e.msg.contains(cmd), "{}", e.msg);
        }
    }

    #[test]
    fn errors_use_the_configs_version() {
        let dir = tempfile::tempdir().unwrap();
        let (out, version) = run_with(&[("CNI_COMMAND", "ADD")], &conf(dir.path()));
        assert_eq!(out.unwrap_err().code, ErrorCode::InvalidEnvironment);
        assert_eq!(version, "0.4.0");
    }

    #[test]
    fn check_is_refused_before_0_4_0() {
        let (out, _) = run_with(
            &[("CNI_COMMAND", "CHECK")],
            r#"{"cniVersion":"0.3.1","name":"m","type":"t"}"#,
        );
        assert_eq!(out.unwrap_err().code, ErrorCode::IncompatibleVersion);
    }

    #[test]
    fn netns_must_exist_and_be_a_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_netns(&dir.path().join("gone").display().to_string()).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownContainer);
        assert!(e.msg.contains("does not exist"), "{}", e.msg);
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = check_netns(&file.display().to_string()).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownContainer);
        assert!(e.msg.contains("not a network namespace"), "{}", e.msg);
        let e = check_netns("/proc/self/ns/net").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(e.msg.contains("own network namespace"), "{}", e.msg);
    }

    #[test]
    fn add_with_a_bad_netns_never_calls_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let netns = dir.path().join("gone").display().to_string();
        let (out, _) = run_with(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
            ],
            &conf(dir.path()),
        );
        assert_eq!(out.unwrap_err().code, ErrorCode::UnknownContainer);
    }

    #[test]
    fn add_with_bad_cni_args_is_code_4() {
        let dir = tempfile::tempdir().unwrap();
        let (out, _) = run_with(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/proc/self/ns/net"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "FOO=bar"),
            ],
            &conf(dir.path()),
        );
        assert_eq!(out.unwrap_err().code, ErrorCode::InvalidEnvironment);
    }

    #[test]
    fn del_without_agent_is_queued_and_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let vars = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ];
        for _ in 0..2 {
            let (out, _) = run_with(&vars, &conf(dir.path()));
            assert_eq!(out.unwrap(), None);
        }
        let queued = read_queue(&dir.path().join("q"));
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].1.container_id, "c1");
        assert_eq!(queued[0].1.netns, "");
        assert_eq!(queued[0].1.network, "membrane");
    }

    #[test]
    fn a_socket_nobody_listens_on_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("stale.sock");
        // Bound then dropped: the file stays, connecting is refused (a crashed agent).
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(connect(&sock));
        assert!(matches!(got, Err(ConnectError::NotRunning(_))));
        let e = rt
            .block_on(connect(&dir.path().join("absent")))
            .err()
            .map(|e| e.into_error("add", &sock))
            .unwrap();
        assert_eq!(e.code, ErrorCode::TryAgainLater);
    }
}
