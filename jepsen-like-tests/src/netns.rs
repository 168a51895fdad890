//! Network namespaces: creating and deleting them, wiring them, and running code inside one.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context};
use nix::sched::{setns, CloneFlags};

use crate::cmd::run;

/// Where `ip netns` keeps its named namespaces.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// `nsenter --net=/run/netns/<name> --`, to which the caller adds a program and its arguments:
/// the program runs in that network namespace and keeps every other namespace of ours.
pub(crate) fn nsenter(name: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(name).display()))
        .arg("--");
    cmd
}

/// Whether a named namespace exists (ours or anyone's).
pub(crate) fn exists(name: &str) -> bool {
    netns_path(name).exists()
}

pub(crate) fn add(name: &str) -> anyhow::Result<()> {
    run("ip", &["netns", "add", name])?;
    Ok(())
}

/// Deleting a namespace also destroys the interfaces in it and their veth peers elsewhere.
pub(crate) fn delete(name: &str) -> anyhow::Result<()> {
    run("ip", &["netns", "delete", name])?;
    Ok(())
}

/// Runs `ip -n <ns> args...`.
pub(crate) fn ip(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full)?;
    Ok(())
}

/// Runs `ip -n <ns> args...` and returns what it printed (e.g. with `-j` for JSON), for
/// tests and benchmarks that inspect or wire namespaces the lab made.
pub fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    let out = run("ip", &full)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the underlay: a bridge `br0` (up) and `lo` (up) in `ns`.
pub(crate) fn setup_underlay(ns: &str) -> anyhow::Result<()> {
    ip(ns, &["link", "set", "lo", "up"])?;
    ip(ns, &["link", "add", "br0", "type", "bridge"])?;
    ip(ns, &["link", "set", "br0", "up"])?;
    Ok(())
}

/// Plugs a host into the underlay: a veth pair created in the underlay namespace as `port`
/// (enslaved to `br0`) whose peer is born directly in `host_ns` as `eth0`, so no interface
/// ever appears in the root namespace, not even for an instant.
pub(crate) fn plug_host(
    underlay: &str,
    host_ns: &str,
    port: &str,
    cidr: &str,
) -> anyhow::Result<()> {
    ip(
        underlay,
        &[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host_ns,
        ],
    )?;
    ip(underlay, &["link", "set", port, "master", "br0", "up"])?;
    ip(host_ns, &["link", "set", "lo", "up"])?;
    ip(host_ns, &["addr", "add", cidr, "dev", "eth0"])?;
    ip(host_ns, &["link", "set", "eth0", "up"])?;
    Ok(())
}

/// Makes sure a bpffs is mounted on /sys/fs/bpf (agents pin their maps below it) and that
/// the lab's pin root exists. Some machines boot without it; mounting it in the root mount
/// namespace is what systemd does, so it outlives every agent, as pins must.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("cannot read mounts")?;
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    });
    if !mounted {
        run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    }
    let root = std::path::Path::new(crate::host::BPF_PIN_ROOT);
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    Ok(())
}

/// Runs `f` on a fresh thread that has entered the named network namespace, and returns its
/// result; a panic in `f` is resumed on the caller.
///
/// Why a thread: `setns(CLONE_NEWNET)` changes only the calling thread, so a short-lived thread
/// can open sockets in a host's namespace without disturbing the test's own threads. Sockets
/// keep the namespace they were created in, so `f` may return them to the caller.
pub fn in_netns<T, F>(netns: &str, f: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = netns_path(netns);
    let file =
        File::open(&path).with_context(|| format!("cannot open namespace {}", path.display()))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> anyhow::Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| anyhow!("cannot enter namespace {netns}: {e}"))?;
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Whether a TCP SYN from namespace `from` to `to:port` gets any answer within `timeout`.
///
/// An accepted connection and a refused one (RST) both prove a round trip, so this works
/// whether or not anything listens on `port` and needs no `ping` binary (not every lab machine
/// has one). Silence — a timeout or an unreachable host — means not reachable.
pub fn tcp_reachable(from: &str, to: IpAddr, port: u16, timeout: Duration) -> anyhow::Result<bool> {
    let addr = SocketAddr::new(to, port);
    in_netns(from, move || {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        }
    })
}
