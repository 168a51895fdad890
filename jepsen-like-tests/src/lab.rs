//! The lab: builds the namespaces, owns the processes and faults, and tears it all down.

use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::cmd::{render, run_with_stdin};
use crate::faults::Faults;
use crate::host::Host;
use crate::netns;
use crate::process::{Launch, Proc};
use crate::util::{membrane_binary, require_root};

/// Set to `1` to keep a lab's temp dir (logs, agent state) after it is dropped; the path is
/// printed on stderr. Namespaces and processes are removed regardless.
pub const KEEP_ENV: &str = "MEMBRANE_LAB_KEEP";

/// Hosts get 10.77.0.(10+i); this keeps the last octet a unicast address.
const MAX_HOSTS: usize = 200;

/// How long [`Lab::stop`] and [`Lab::restart`] let a process exit on SIGTERM.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Port the reachability probe aims at; nothing needs to listen there (see [`crate::tcp_reachable`]).
const PROBE_PORT: u16 = 9;

/// N hosts, each a network namespace plugged into one bridge in an underlay namespace, each
/// able to run one process (normally `membrane agent`), plus the faults applied to them.
///
/// Hosts are numbered from 1, as in the namespace names and addresses. Every method takes
/// `&self` and `Lab` is `Sync`, so a nemesis thread can kill or cut hosts while workload threads
/// call the CLI. Dropping the lab (also during a panic) kills its processes, deletes its
/// namespaces and removes its temp dir; see [`KEEP_ENV`].
pub struct Lab {
    id: String,
    underlay: String,
    hosts: Vec<Host>,
    procs: Vec<Proc>,
    faults: Mutex<Faults>,
    /// Namespaces this lab created, in creation order: exactly what Drop deletes.
    created: Vec<String>,
    /// Endpoint namespaces made after the build ([`Lab::add_endpoint_netns`]); behind a lock
    /// because they are added through `&self`. Drop deletes them before the hosts'.
    endpoints: Mutex<Vec<String>>,
    dir: Option<TempDir>,
}

impl Lab {
    /// Builds a lab of `hosts` hosts; `name_hint` (e.g. the test name) only labels the temp dir.
    ///
    /// The lab id is `mb` and 4 hex digits, unique among existing namespaces, so parallel
    /// tests never share a namespace. Namespaces are `<id>-ul` (bridge `br0`) and `<id>-h<i>`
    /// (`eth0` = 10.77.0.<10+i>/24, its veth peer `h<i>` on `br0`). If any step fails, what was
    /// already created is removed before the error is returned.
    pub fn new(name_hint: &str, hosts: usize) -> anyhow::Result<Lab> {
        Lab::build(name_hint, hosts, None)
    }

    fn build(name_hint: &str, hosts: usize, fail_after: Option<usize>) -> anyhow::Result<Lab> {
        require_root()?;
        if hosts == 0 || hosts > MAX_HOSTS {
            bail!("a lab has 1..={MAX_HOSTS} hosts, not {hosts}");
        }
        let id = pick_id(hosts)?;
        Lab::build_as(&id, name_hint, hosts, fail_after)
            .with_context(|| format!("cannot build lab {id} ({hosts} hosts, {name_hint})"))
    }

    /// Builds lab `id`, failing on purpose once host `fail_after` is plugged in, so a test can
    /// check the cleanup of a half-built lab.
    fn build_as(
        id: &str,
        name_hint: &str,
        hosts: usize,
        fail_after: Option<usize>,
    ) -> anyhow::Result<Lab> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-{}-", sanitize(name_hint)))
            .tempdir()
            .context("cannot create the lab's temp dir")?;
        let host_list: Vec<Host> = (1..=hosts).map(|i| Host::new(id, i, dir.path())).collect();
        // From here on the lab owns what it creates; an early return drops it, which cleans up.
        let mut lab = Lab {
            underlay: format!("{id}-ul"),
            id: id.to_string(),
            procs: host_list.iter().map(|_| Proc::default()).collect(),
            hosts: host_list,
            faults: Mutex::new(Faults::default()),
            created: Vec::new(),
            endpoints: Mutex::new(Vec::new()),
            dir: Some(dir),
        };
        for h in &lab.hosts {
            for socket in [h.socket(), h.plugin_socket()] {
                if socket.as_os_str().len() > MAX_SOCKET_PATH {
                    bail!(
                        "socket path {} is too long for a Unix socket; use a shorter TMPDIR",
                        socket.display()
                    );
                }
            }
            std::fs::create_dir_all(h.state_dir())
                .with_context(|| format!("cannot create {}", h.state_dir().display()))?;
        }
        let underlay = lab.underlay.clone();
        netns::add(&underlay)?;
        lab.created.push(underlay.clone());
        netns::setup_underlay(&underlay)?;
        for i in 0..lab.hosts.len() {
            let h = lab.hosts[i].clone();
            netns::add(h.netns())?;
            lab.created.push(h.netns().to_string());
            netns::plug_host(&underlay, h.netns(), h.underlay_port(), &h.cidr())
                .with_context(|| format!("cannot plug {} into the underlay", h.name()))?;
            if fail_after == Some(h.index()) {
                bail!("injected failure after host {}", h.index());
            }
        }
        Ok(lab)
    }

    /// The lab id, the prefix of all its namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lab's temp dir, holding one directory per host.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(TempDir::path)
            .unwrap_or(Path::new(""))
    }

    /// The namespace that holds the bridge `br0` and the faults' nftables table.
    pub fn underlay_netns(&self) -> &str {
        &self.underlay
    }

    /// All namespaces the lab created (underlay first), e.g. to check cleanup.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// Creates an empty network namespace `<lab id>-h<host>-<name>` for an endpoint (a
    /// "container") of host `host`, with `lo` up, and returns its name. The lab deletes it on
    /// drop. Keep `name` short: namespace names show up in errors and `ip` output.
    pub fn add_endpoint_netns(&self, host: usize, name: &str) -> anyhow::Result<String> {
        let h = self.host_checked(host)?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("endpoint namespace name {name:?} must be [A-Za-z0-9-]+");
        }
        let ns = format!("{}-{name}", h.netns());
        let mut list = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if list.contains(&ns) {
            bail!("endpoint namespace {ns} already exists in lab {}", self.id);
        }
        netns::add(&ns)?;
        list.push(ns.clone());
        drop(list);
        netns::ip(&ns, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Deletes an endpoint namespace made by [`Lab::add_endpoint_netns`] now, rather than on
    /// drop (which also destroys any veth in it).
    pub fn delete_endpoint_netns(&self, ns: &str) -> anyhow::Result<()> {
        let mut list = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pos) = list.iter().position(|n| n == ns) else {
            bail!("{ns} is not an endpoint namespace of lab {}", self.id);
        };
        netns::delete(ns)?;
        list.remove(pos);
        Ok(())
    }

    /// The number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Always false: a lab has at least one host. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// All hosts, host 1 first.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i` (1-based).
    ///
    /// # Panics
    /// If there is no host `i`, like slice indexing: that is a bug in the test.
    pub fn host(&self, i: usize) -> &Host {
        match self.slot(i) {
            Ok(k) => &self.hosts[k],
            Err(e) => panic!("{e}"),
        }
    }

    fn slot(&self, i: usize) -> anyhow::Result<usize> {
        match i.checked_sub(1) {
            Some(k) if k < self.hosts.len() => Ok(k),
            _ => bail!(
                "lab {} has hosts 1..={}, not {i}",
                self.id,
                self.hosts.len()
            ),
        }
    }

    fn proc(&self, i: usize) -> anyhow::Result<(&Host, &Proc)> {
        let k = self.slot(i)?;
        Ok((&self.hosts[k], &self.procs[k]))
    }

    // ---- processes -------------------------------------------------------------------------

    /// Starts `membrane <args...>` in host `i`'s namespace (see [`Lab::start_command`]).
    /// Returns its pid.
    pub fn start(&self, i: usize, args: &[String]) -> anyhow::Result<u32> {
        let bin = membrane_binary()?;
        self.start_command(i, bin.as_os_str(), args)
    }

    /// Starts `program <args...>` in host `i`'s namespace as the host's tracked process, with
    /// stdout and stderr appended to [`Host::log_path`] after a `=== lab: ... start` marker
    /// line. Fails if the host already runs one. Returns its pid, which is the program's own
    /// (`nsenter` execs it), so signals reach the program.
    pub fn start_command<P, S>(&self, i: usize, program: P, args: &[S]) -> anyhow::Result<u32>
    where
        P: AsRef<OsStr>,
        S: AsRef<OsStr>,
    {
        let (host, proc) = self.proc(i)?;
        let launch = Launch {
            program: program.as_ref().into(),
            args: args.iter().map(|a| a.as_ref().to_os_string()).collect(),
        };
        proc.start(host.netns(), launch, &host.log_path())
    }

    /// Stops host `i`'s process if it runs ([`Lab::stop`]) and starts again what was started
    /// last, with the same arguments. The state dir is kept, as on a real reboot.
    pub fn restart(&self, i: usize) -> anyhow::Result<u32> {
        let (host, proc) = self.proc(i)?;
        let Some(launch) = proc.last_launch() else {
            bail!(
                "nothing was ever started on {}; use start first",
                host.name()
            );
        };
        proc.stop(STOP_GRACE)?;
        proc.start(host.netns(), launch, &host.log_path())
    }

    /// SIGKILL host `i`'s process and reap it: a crash. Returns its exit status, or `None`
    /// if nothing was running.
    pub fn kill(&self, i: usize) -> anyhow::Result<Option<ExitStatus>> {
        self.proc(i)?.1.kill()
    }

    /// SIGTERM host `i`'s process, wait up to 5 s for it to exit, then SIGKILL: a clean
    /// shutdown, or a crash if it does not honour SIGTERM. A paused process is resumed so that
    /// it can. Returns its exit status, or `None` if nothing was running.
    pub fn stop(&self, i: usize) -> anyhow::Result<Option<ExitStatus>> {
        self.proc(i)?.1.stop(STOP_GRACE)
    }

    /// SIGSTOP host `i`'s process: it stays alive but stops answering, like a long GC pause or
    /// a hung host, which is harder on failure detectors than a crash.
    pub fn pause(&self, i: usize) -> anyhow::Result<()> {
        self.proc(i)?.1.pause()
    }

    /// SIGCONT host `i`'s process.
    pub fn resume(&self, i: usize) -> anyhow::Result<()> {
        self.proc(i)?.1.resume()
    }

    /// Whether host `i`'s process is alive (paused counts as alive).
    pub fn is_running(&self, i: usize) -> anyhow::Result<bool> {
        self.proc(i)?.1.is_running()
    }

    /// Whether host `i`'s process is alive and paused by [`Lab::pause`].
    pub fn is_paused(&self, i: usize) -> anyhow::Result<bool> {
        self.proc(i)?.1.is_paused()
    }

    /// The pid of host `i`'s process while it is alive.
    pub fn pid(&self, i: usize) -> anyhow::Result<Option<u32>> {
        self.proc(i)?.1.pid()
    }

    /// How host `i`'s last process ended, once it has (killed, stopped, or on its own).
    pub fn last_exit(&self, i: usize) -> anyhow::Result<Option<ExitStatus>> {
        self.proc(i)?.1.last_exit()
    }

    // ---- commands --------------------------------------------------------------------------

    /// Runs `membrane --socket <host i's socket> <args...>` in the root namespace and returns
    /// its output, whatever its exit status: the CLI talks to the agent over the Unix socket,
    /// which works across network namespaces.
    pub fn cli(&self, i: usize, args: &[&str]) -> anyhow::Result<Output> {
        let host = self.host_checked(i)?;
        let bin = membrane_binary()?;
        let socket = host.socket();
        Command::new(&bin)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| {
                format!(
                    "cannot run `{} --socket {} {}`",
                    bin.display(),
                    socket.display(),
                    args.join(" ")
                )
            })
    }

    /// Runs `cmd` inside host `i`'s namespace (`ip netns exec`) and returns its output,
    /// whatever its exit status.
    pub fn exec(&self, i: usize, cmd: &[&str]) -> anyhow::Result<Output> {
        let host = self.host_checked(i)?;
        if cmd.is_empty() {
            bail!("exec needs a command");
        }
        let mut args = vec!["netns", "exec", host.netns()];
        args.extend_from_slice(cmd);
        Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{}`", render("ip", &args)))
    }

    fn host_checked(&self, i: usize) -> anyhow::Result<&Host> {
        Ok(&self.hosts[self.slot(i)?])
    }

    // ---- network -----------------------------------------------------------------------------

    /// Whether host `from` gets an answer from host `to` over the underlay within `timeout`
    /// (a TCP probe; see [`crate::tcp_reachable`]).
    pub fn reachable(&self, from: usize, to: usize, timeout: Duration) -> anyhow::Result<bool> {
        let from = self.host_checked(from)?;
        let to: IpAddr = self.host_checked(to)?.ip();
        netns::tcp_reachable(from.netns(), to, PROBE_PORT, timeout)
    }

    /// Isolates host `i`: the underlay drops every frame to and from its port. The host keeps
    /// its link and addresses and hears nothing, as behind a failed switch. Idempotent.
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        self.slot(i)?;
        self.change_faults(|f| {
            f.cut(i);
            Ok(())
        })
    }

    /// Undoes [`Lab::cut`] for host `i` (a partition in force stays). Idempotent.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        self.slot(i)?;
        self.change_faults(|f| {
            f.heal(i);
            Ok(())
        })
    }

    /// Splits the hosts into groups that hear only each other, e.g. `&[&[1, 2], &[3]]`. Every
    /// host must be in exactly one group. Replaces any earlier partition; cuts stay.
    pub fn partition(&self, groups: &[&[usize]]) -> anyhow::Result<()> {
        let n = self.hosts.len();
        self.change_faults(|f| f.partition(n, groups))
    }

    /// Ends the partition in force, if any; cuts stay.
    pub fn heal_partition(&self) -> anyhow::Result<()> {
        self.change_faults(|f| {
            f.heal_partition();
            Ok(())
        })
    }

    /// Removes every network fault.
    pub fn heal_all(&self) -> anyhow::Result<()> {
        self.change_faults(|f| {
            f.heal_all();
            Ok(())
        })
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to a copy of the faults, installs the resulting ruleset, and keeps the
    /// new faults only if nft accepted it, so the recorded faults always match the kernel.
    fn change_faults(
        &self,
        change: impl FnOnce(&mut Faults) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut current = self.faults();
        let mut next = current.clone();
        change(&mut next)?;
        let ports: Vec<&str> = self.hosts.iter().map(Host::underlay_port).collect();
        let script = next.ruleset(&ports);
        run_with_stdin(
            "ip",
            &["netns", "exec", &self.underlay, "nft", "-f", "-"],
            Some(&script),
        )
        .with_context(|| format!("cannot apply faults:\n{script}"))?;
        *current = next;
        Ok(())
    }
}

impl Drop for Lab {
    /// Never panics (it may run during a panic): failures are reported on stderr.
    fn drop(&mut self) {
        for (h, p) in self.hosts.iter().zip(&self.procs) {
            if let Err(e) = p.kill() {
                eprintln!(
                    "lab {}: cannot kill the process of {}: {e:#}",
                    self.id,
                    h.name()
                );
            }
        }
        let endpoints = std::mem::take(self.endpoints.get_mut().unwrap_or_else(|e| e.into_inner()));
        for ns in endpoints.iter().rev().chain(self.created.iter().rev()) {
            if let Err(e) = netns::delete(ns) {
                eprintln!("lab {}: cannot delete namespace {ns}: {e:#}", self.id);
            }
        }
        // After the agents are dead and their devices gone, so nothing holds the maps open;
        // unpinning the last reference frees them.
        for h in &self.hosts {
            let pins = h.bpf_pin_dir();
            if pins.exists() {
                if let Err(e) = std::fs::remove_dir_all(pins) {
                    eprintln!("lab {}: cannot remove {}: {e}", self.id, pins.display());
                }
            }
        }
        if let Some(dir) = self.dir.take() {
            let keep = std::env::var(KEEP_ENV)
                .map(|v| !v.is_empty() && v != "0")
                .unwrap_or(false);
            if keep {
                eprintln!(
                    "lab {}: kept {} ({KEEP_ENV} is set)",
                    self.id,
                    dir.keep().display()
                );
            } else {
                let path = dir.path().to_path_buf();
                if let Err(e) = dir.close() {
                    eprintln!("lab {}: cannot remove {}: {e}", self.id, path.display());
                }
            }
        }
    }
}

/// A lab id `mb<4 hex>` whose namespaces do not exist yet. Short, because namespace names show
/// up in `ip` output and errors; random, because parallel tests and processes build labs at
/// once. (A race between two processes picking the same id makes `ip netns add` fail, which is
/// reported, never shared.)
fn pick_id(hosts: usize) -> anyhow::Result<String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for _ in 0..64 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        let id = format!("mb{:04x}", h.finish() & 0xffff);
        let taken = netns::exists(&format!("{id}-ul"))
            || (1..=hosts).any(|i| netns::exists(&format!("{id}-h{i}")));
        if !taken {
            return Ok(id);
        }
    }
    bail!("cannot find a free lab id; are stale labs left over? (`ip netns list | grep ^mb`)")
}

/// The name hint as it may appear in a path: short, and only `[A-Za-z0-9_-]`.
fn sanitize(hint: &str) -> String {
    hint.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(24)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_paths_short_and_plain() {
        assert_eq!(sanitize("a b/c"), "a-b-c");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 24);
    }

    /// A lab that fails half-way leaves nothing behind.
    #[test]
    fn failed_build_removes_what_it_created() -> anyhow::Result<()> {
        require_root()?;
        let id = pick_id(3)?;
        let err = match Lab::build_as(&id, "halfway", 3, Some(2)) {
            Ok(_) => bail!("the injected failure did not fail the build"),
            Err(e) => e,
        };
        assert!(format!("{err:#}").contains("injected failure"), "{err:#}");
        for ns in [
            format!("{id}-ul"),
            format!("{id}-h1"),
            format!("{id}-h2"),
            format!("{id}-h3"),
        ] {
            assert!(!netns::exists(&ns), "namespace {ns} left behind");
        }
        let prefix = format!("{id}-halfway-");
        let leftovers: Vec<String> = std::fs::read_dir(std::env::temp_dir())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(leftovers.is_empty(), "temp dirs left: {leftovers:?}");
        Ok(())
    }
}
