//! `start`, `restart` and `cli` with a stand-in for the membrane binary (via `MEMBRANE_BIN`),
//! so the plumbing is checked without building the agent. Its own test binary, because it sets
//! an environment variable for the whole process.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::Context;
use membrane_jepsen::{membrane_binary, require_root, wait_until, Lab};

/// Prints its arguments and, as `agent`, stays up like an agent would.
const FAKE: &str = "#!/bin/sh\necho \"fake membrane: $*\"\nfor a in \"$@\"; do [ \"$a\" = agent ] && exec sleep 1000; done\nexit 0\n";

#[test]
fn start_restart_and_cli_run_the_membrane_binary() -> anyhow::Result<()> {
    require_root()?;
    let bin_dir = tempfile::tempdir()?;
    let fake = bin_dir.path().join("membrane");
    std::fs::write(&fake, FAKE)?;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
    // The only test in this binary, so no other thread reads the environment meanwhile.
    std::env::set_var("MEMBRANE_BIN", &fake);
    assert_eq!(membrane_binary()?, fake);

    let lab = Lab::new("fake-bin", 1)?;
    let h = lab.host(1);
    let args: Vec<String> = vec![
        "--socket".into(),
        h.socket().display().to_string(),
        "agent".into(),
        "--state-dir".into(),
        h.state_dir().display().to_string(),
        "--listen-addr".into(),
        h.rpc_addr().to_string(),
    ];
    let pid = lab.start(1, &args)?;
    let expected = format!("fake membrane: {}", args.join(" "));
    let log_has = |n: usize| -> anyhow::Result<bool> {
        let log = std::fs::read_to_string(h.log_path())?;
        Ok(log.matches(&expected).count() >= n)
    };
    wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        log_has(1)
    })
    .context("first start")?;
    assert!(lab.is_running(1)?);

    let pid2 = lab.restart(1)?;
    assert_ne!(pid, pid2);
    wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        log_has(2)
    })
    .context("restart")?;

    let out = lab.cli(1, &["status", "-o", "json"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.trim(),
        format!(
            "fake membrane: --socket {} status -o json",
            h.socket().display()
        )
    );
    Ok(())
}
