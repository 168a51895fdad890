//! The process a host runs: start it inside the host's namespace, signal it, reap it.
//!
//! A host runs at most one tracked process (its agent). It is started as
//! `nsenter --net=/run/netns/<ns> -- <program> <args...>`; nsenter enters the network
//! namespace and then execs the program (no `--fork`), so the child's pid is the program's pid
//! and signals reach the agent itself, not a wrapper (the lab tests check this). Until the lab
//! reaps it the pid cannot be reused, so signalling it is never a shot at a stranger.
//!
//! Why not `ip netns exec`: it also unshares the mount namespace and remounts /sys, so a
//! bpffs the agent pins its maps in would be private to that process and vanish with it, and
//! a restarted agent would find no maps. nsenter changes only the network namespace.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How often a graceful stop checks whether the process has exited.
const STOP_POLL: Duration = Duration::from_millis(20);

/// What was started, kept so that a restart runs the same thing.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

#[derive(Default)]
struct State {
    child: Option<Child>,
    paused: bool,
    last: Option<Launch>,
    last_exit: Option<ExitStatus>,
}

impl State {
    /// Reaps the child if it has exited, so `child` is `Some` only while it lives.
    fn refresh(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait().context("cannot poll the host's process")? {
                self.child = None;
                self.paused = false;
                self.last_exit = Some(status);
            }
        }
        Ok(())
    }

    fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let Some(child) = self.child.as_ref() else {
            bail!("no process is running")
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        kill(pid, sig).with_context(|| format!("cannot send {sig} to pid {pid}"))
    }

    /// SIGKILL and reap; a no-op when nothing runs.
    fn kill_now(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.refresh()?;
        if self.child.is_none() {
            return Ok(None);
        }
        self.signal(Signal::SIGKILL)?;
        self.reap()
    }

    fn reap(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        self.paused = false;
        let status = child.wait().context("cannot reap the host's process")?;
        self.last_exit = Some(status);
        Ok(Some(status))
    }
}

/// The process slot of one host. Interior locking lets a nemesis thread kill a host while
/// workload threads use the same `&Lab`.
#[derive(Default)]
pub(crate) struct Proc {
    state: Mutex<State>,
}

impl Proc {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent enough to clean up.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `launch` in `netns`, appending its output to `log`. Fails if one is running.
    pub fn start(&self, netns: &str, launch: Launch, log: &Path) -> anyhow::Result<u32> {
        let mut st = self.lock();
        st.refresh()?;
        if let Some(child) = st.child.as_ref() {
            bail!(
                "a process (pid {}) is already running in {netns}; stop it first",
                child.id()
            );
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open log {}", log.display()))?;
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = crate::cmd::render(&launch.program.to_string_lossy(), &launch.args);
        // A marker per start, so restarts are easy to find in the log.
        writeln!(
            file,
            "=== lab: t={:.3} start in {netns}: {line}",
            since_epoch.as_secs_f64()
        )
        .with_context(|| format!("cannot write log {}", log.display()))?;
        let stderr = file
            .try_clone()
            .context("cannot duplicate the log file handle")?;
        let net = format!("--net={}", crate::netns::netns_path(netns).display());
        let child = Command::new("nsenter")
            .arg(&net)
            .arg("--")
            .arg(&launch.program)
            .args(&launch.args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start `nsenter {net} -- {line}` (util-linux)"))?;
        let pid = child.id();
        st.child = Some(child);
        st.paused = false;
        st.last = Some(launch);
        Ok(pid)
    }

    /// What was started last, for restarts.
    pub fn last_launch(&self) -> Option<Launch> {
        self.lock().last.clone()
    }

    pub fn kill(&self) -> anyhow::Result<Option<ExitStatus>> {
        self.lock().kill_now()
    }

    /// SIGTERM (and SIGCONT, as a paused process cannot act on SIGTERM), wait up to `grace`,
    /// then SIGKILL.
    pub fn stop(&self, grace: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let mut st = self.lock();
        st.refresh()?;
        if st.child.is_none() {
            return Ok(None);
        }
        st.signal(Signal::SIGTERM)?;
        st.signal(Signal::SIGCONT)?;
        st.paused = false;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            st.refresh()?;
            if st.child.is_none() {
                return Ok(st.last_exit);
            }
            std::thread::sleep(STOP_POLL);
        }
        st.kill_now()
    }

    pub fn pause(&self) -> anyhow::Result<()> {
        let mut st = self.lock();
        st.refresh()?;
        st.signal(Signal::SIGSTOP)?;
        st.paused = true;
        Ok(())
    }

    pub fn resume(&self) -> anyhow::Result<()> {
        let mut st = self.lock();
        st.refresh()?;
        st.signal(Signal::SIGCONT)?;
        st.paused = false;
        Ok(())
    }

    /// Whether the process lives (a paused process does).
    pub fn is_running(&self) -> anyhow::Result<bool> {
        let mut st = self.lock();
        st.refresh()?;
        Ok(st.child.is_some())
    }

    pub fn is_paused(&self) -> anyhow::Result<bool> {
        let mut st = self.lock();
        st.refresh()?;
        Ok(st.paused)
    }

    pub fn pid(&self) -> anyhow::Result<Option<u32>> {
        let mut st = self.lock();
        st.refresh()?;
        Ok(st.child.as_ref().map(Child::id))
    }

    /// How the last process that ended (killed, stopped or on its own) exited.
    pub fn last_exit(&self) -> anyhow::Result<Option<ExitStatus>> {
        let mut st = self.lock();
        st.refresh()?;
        Ok(st.last_exit)
    }
}
