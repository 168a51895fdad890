//! The lab on real namespaces: wiring, faults, process control and cleanup. No agent binary is
//! needed; these tests check the harness that the agent tests stand on.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use membrane_jepsen::{require_root, wait_until, Lab};

/// Long enough for an answer inside one machine, short enough that negative probes are cheap.
const PROBE: Duration = Duration::from_millis(500);

fn netns_list() -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("ip netns list")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The one-letter state in /proc/<pid>/stat (R, S, T, Z, ...).
fn proc_state(pid: u32) -> anyhow::Result<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.trim_start())
        .unwrap_or("");
    after.chars().next().context("no state in /proc/<pid>/stat")
}

fn wait_reachable(lab: &Lab, from: usize, to: usize) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        lab.reachable(from, to, PROBE)
    })
    .with_context(|| format!("h{from} never reached h{to}"))
}

fn assert_cleaned(namespaces: &[String], dir: &Path, pid: Option<u32>) -> anyhow::Result<()> {
    let list = netns_list()?;
    for ns in namespaces {
        let left = list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns.as_str()));
        assert!(!left, "namespace {ns} is still listed:\n{list}");
    }
    // MEMBRANE_LAB_KEEP asks for the temp dir to stay, for debugging.
    if std::env::var_os(membrane_jepsen::KEEP_ENV).is_none() {
        assert!(!dir.exists(), "temp dir {} still exists", dir.display());
    }
    if let Some(pid) = pid {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived the lab"
        );
    }
    Ok(())
}

#[test]
fn hosts_have_unique_short_names_and_their_own_paths() -> anyhow::Result<()> {
    require_root()?;
    let a = Lab::new("names-a", 2)?;
    let b = Lab::new("names-b", 2)?;
    assert_ne!(a.id(), b.id());
    assert_eq!(a.namespaces().len(), 3);
    for ns in a.namespaces() {
        assert!(ns.len() <= 15 && ns.starts_with(a.id()), "{ns}");
        assert!(!b.namespaces().contains(ns), "{ns} shared between labs");
    }
    let h2 = a.host(2);
    assert_eq!(h2.name(), "h2");
    assert_eq!(h2.netns(), format!("{}-h2", a.id()));
    assert_eq!(h2.ip().to_string(), "10.77.0.12");
    assert_eq!(h2.rpc_addr().to_string(), "10.77.0.12:7700");
    assert_eq!(h2.state_dir(), a.dir().join("h2").join("state"));
    assert!(h2.state_dir().is_dir());
    assert_eq!(h2.socket(), a.dir().join("h2").join("agent.sock"));
    assert_eq!(h2.log_path(), a.dir().join("h2").join("agent.log"));
    assert!(a.kill(3).is_err(), "host 3 does not exist");

    let out = a.exec(2, &["ip", "-br", "addr", "show", "eth0"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("10.77.0.12/24"),
        "{text}"
    );
    let out = a.exec(1, &["ip", "-br", "link", "show", "lo"])?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("UP"),
        "lo is not up in h1"
    );
    Ok(())
}

#[test]
fn cut_isolates_one_host_and_heal_restores_it() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("cut", 3)?;
    for (from, to) in [(1, 2), (2, 1), (1, 3), (3, 2)] {
        wait_reachable(&lab, from, to)?;
    }

    lab.cut(2)?;
    assert!(!lab.reachable(2, 1, PROBE)?, "cut h2 still reaches h1");
    assert!(!lab.reachable(1, 2, PROBE)?, "h1 still reaches cut h2");
    assert!(!lab.reachable(3, 2, PROBE)?, "h3 still reaches cut h2");
    assert!(
        lab.reachable(1, 3, PROBE)?,
        "h1 lost h3 though only h2 is cut"
    );
    assert!(
        lab.reachable(3, 1, PROBE)?,
        "h3 lost h1 though only h2 is cut"
    );
    // A cut is a silent network, not a pulled cable: the host's link stays up.
    let out = lab.exec(2, &["ip", "-br", "link", "show", "eth0"])?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("LOWER_UP"),
        "eth0 of h2 lost its carrier"
    );

    lab.heal(2)?;
    wait_reachable(&lab, 2, 1)?;
    wait_reachable(&lab, 1, 2)?;
    assert!(lab.reachable(1, 3, PROBE)?);
    Ok(())
}

#[test]
fn partition_splits_hosts_into_groups() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("partition", 3)?;
    wait_reachable(&lab, 1, 2)?;
    wait_reachable(&lab, 2, 3)?;

    lab.partition(&[&[1], &[2, 3]])?;
    assert!(!lab.reachable(1, 2, PROBE)?);
    assert!(!lab.reachable(3, 1, PROBE)?);
    assert!(lab.reachable(2, 3, PROBE)?);
    assert!(
        lab.partition(&[&[1], &[2]]).is_err(),
        "a partition that leaves out h3 is refused"
    );

    lab.cut(3)?;
    lab.heal_partition()?;
    wait_reachable(&lab, 1, 2)?;
    assert!(
        !lab.reachable(1, 3, PROBE)?,
        "healing the partition must not heal a cut"
    );
    lab.heal_all()?;
    wait_reachable(&lab, 1, 3)?;
    Ok(())
}

#[test]
fn process_control_hits_the_program_itself() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("procs", 2)?;
    let pid = lab.start_command(1, "sleep", &["1000"])?;
    assert!(
        lab.start_command(1, "sleep", &["1000"]).is_err(),
        "a second process on h1"
    );

    // nsenter execs the program: the tracked pid is sleep, in h1's network namespace and in the
    // root mount namespace (so bpffs pins outlive it).
    wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        Ok(std::fs::read_to_string(format!("/proc/{pid}/comm"))?.trim() == "sleep")
    })?;
    let ns_ino = std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino();
    let h1_ino = std::fs::metadata(PathBuf::from("/run/netns").join(lab.host(1).netns()))?.ino();
    assert_eq!(ns_ino, h1_ino, "the process is not in h1's namespace");
    let mnt_ino = std::fs::metadata(format!("/proc/{pid}/ns/mnt"))?.ino();
    let own_mnt = std::fs::metadata("/proc/self/ns/mnt")?.ino();
    assert_eq!(
        mnt_ino, own_mnt,
        "the process got a private mount namespace"
    );
    assert!(lab.is_running(1)?);
    assert_eq!(lab.pid(1)?, Some(pid));

    lab.pause(1)?;
    wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        Ok(proc_state(pid)? == 'T')
    })?;
    assert!(lab.is_running(1)? && lab.is_paused(1)?);
    lab.resume(1)?;
    wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        Ok(proc_state(pid)? != 'T')
    })?;
    assert!(!lab.is_paused(1)?);

    let status = lab.kill(1)?.context("kill found nothing running")?;
    assert_eq!(status.signal(), Some(9), "{status}");
    assert!(!lab.is_running(1)?);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "killed process was not reaped"
    );
    assert_eq!(lab.kill(1)?, None, "kill of nothing is a no-op");
    assert!(lab.pause(1).is_err(), "nothing to pause");

    // Restart runs the same command again; stop of a paused process still ends on SIGTERM.
    let pid2 = lab.restart(1)?;
    assert_ne!(pid, pid2);
    assert!(lab.is_running(1)?);
    lab.pause(1)?;
    let t = Instant::now();
    let status = lab.stop(1)?.context("stop found nothing running")?;
    assert_eq!(status.signal(), Some(15), "{status}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "stop waited for the SIGKILL fallback"
    );

    // A process that ends on its own is noticed, and its output is in the host's log.
    lab.start_command(2, "sh", &["-c", "echo hello-from-h2; exit 3"])?;
    wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        Ok(!lab.is_running(2)?)
    })?;
    assert_eq!(lab.last_exit(2)?.and_then(|s| s.code()), Some(3));
    let log = std::fs::read_to_string(lab.host(2).log_path())?;
    assert!(
        log.contains("=== lab:") && log.contains("hello-from-h2"),
        "{log}"
    );
    Ok(())
}

#[test]
fn drop_removes_processes_namespaces_and_temp_dir() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("drop", 2)?;
    let pid = lab.start_command(2, "sleep", &["1000"])?;
    let namespaces = lab.namespaces().to_vec();
    let dir = lab.dir().to_path_buf();
    let list = netns_list()?;
    for ns in &namespaces {
        assert!(
            list.contains(ns.as_str()),
            "{ns} missing before drop:\n{list}"
        );
    }
    drop(lab);
    assert_cleaned(&namespaces, &dir, Some(pid))
}

#[test]
fn a_panic_in_a_test_still_cleans_up() -> anyhow::Result<()> {
    require_root()?;
    let seen: Mutex<Option<(Vec<String>, PathBuf, u32)>> = Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new("panic", 2).expect("lab");
        let pid = lab.start_command(1, "sleep", &["1000"]).expect("sleep");
        *seen.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((lab.namespaces().to_vec(), lab.dir().to_path_buf(), pid));
        panic!("a test failing with a lab alive");
    }));
    if result.is_ok() {
        bail!("the closure was meant to panic");
    }
    let Some((namespaces, dir, pid)) = seen.into_inner().unwrap_or_else(|e| e.into_inner()) else {
        bail!("the lab was never built");
    };
    assert_cleaned(&namespaces, &dir, Some(pid))
}

#[test]
fn wait_until_reports_the_last_observation() {
    let short = Duration::from_millis(50);
    let poll = Duration::from_millis(5);
    let err = wait_until(short, poll, || Ok(false)).expect_err("never true");
    assert!(err.to_string().contains("still false"), "{err}");
    let err = wait_until(short, poll, || bail!("agent not up yet")).expect_err("never true");
    assert!(err.to_string().contains("agent not up yet"), "{err}");
    let mut n = 0;
    wait_until(Duration::from_secs(1), poll, || {
        n += 1;
        Ok(n == 3)
    })
    .expect("true on the third check");
}

/// Endpoint namespaces and the hosts' BPF pin dirs go with the lab, also on panic.
#[test]
fn drop_removes_endpoint_namespaces_and_pin_dirs() -> anyhow::Result<()> {
    require_root()?;
    membrane_jepsen::ensure_bpffs()?;
    let lab = Lab::new("epns", 2)?;
    let ns = lab.add_endpoint_netns(2, "web")?;
    assert_eq!(ns, format!("{}-h2-web", lab.id()));
    assert!(
        lab.add_endpoint_netns(2, "web").is_err(),
        "a duplicate name"
    );
    assert!(
        lab.add_endpoint_netns(1, "a b").is_err(),
        "a name with a space"
    );
    let other = lab.add_endpoint_netns(1, "db")?;
    lab.delete_endpoint_netns(&other)?;
    assert!(
        !netns_list()?.contains(other.as_str()),
        "{other} not deleted"
    );
    let pins = lab.host(1).bpf_pin_dir().to_path_buf();
    assert!(
        pins.starts_with(membrane_jepsen::BPF_PIN_ROOT),
        "{}",
        pins.display()
    );
    std::fs::create_dir_all(pins.join("sub"))?;
    let mut namespaces = lab.namespaces().to_vec();
    namespaces.push(ns);
    let dir = lab.dir().to_path_buf();
    drop(lab);
    assert_cleaned(&namespaces, &dir, None)?;
    assert!(!pins.exists(), "{} left behind", pins.display());
    Ok(())
}
