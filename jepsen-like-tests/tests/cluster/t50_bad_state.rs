use std::path::Path;
use std::process::{Command, Output};

use membrane_jepsen::membrane_binary;

/// Runs `membrane agent` on a state dir with a socket of its own; returns its output.
fn agent(state: &Path, socket: &Path) -> anyhow::Result<Output> {
    Ok(Command::new(membrane_binary()?)
        .args([
            "--socket",
            &socket.display().to_string(),
            "agent",
            "--state-dir",
            &state.display().to_string(),
        ])
        .args(["--listen-addr", "127.0.0.1:0"])
        .output()?)
}

fn init(state: &Path) -> anyhow::Result<()> {
    let out = Command::new(membrane_binary()?)
        .args([
            "init",
            "--state-dir",
            &state.display().to_string(),
            "--advertise-addr",
            "127.0.0.1:17700",
            "--name",
            "n1",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn assert_clear_failure(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent must refuse to start");
    assert!(
        !stderr.contains("panicked"),
        "a panic instead of an error: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
}

/// Corrupt or unreadable state: a clear error at start, never a panic, and nothing rewritten.
#[test]
fn t50_corrupt_state_is_a_clear_error() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let sock = tmp.path().join("a.sock");

    // No state at all.
    let out = agent(&tmp.path().join("empty"), &sock)?;
    assert_clear_failure(&out, "run `membrane init`");

    // node.json garbage.
    let s1 = tmp.path().join("s1");
    init(&s1)?;
    std::fs::write(s1.join("node.json"), b"\x00garbage")?;
    assert_clear_failure(&agent(&s1, &sock)?, "node.json is corrupt");

    // A key file that is not a key; it must not be replaced.
    let s2 = tmp.path().join("s2");
    init(&s2)?;
    std::fs::write(s2.join("keys/tls.key"), b"not a key")?;
    assert_clear_failure(&agent(&s2, &sock)?, "tls.key");
    assert_eq!(std::fs::read(s2.join("keys/tls.key"))?, b"not a key");

    // A certificate file with no certificate.
    let s3 = tmp.path().join("s3");
    init(&s3)?;
    std::fs::write(s3.join("tls/node.crt"), b"nothing")?;
    assert_clear_failure(&agent(&s3, &sock)?, "node.crt is corrupt");

    // The Raft store is garbage.
    let s4 = tmp.path().join("s4");
    init(&s4)?;
    std::fs::create_dir_all(s4.join("raft"))?;
    std::fs::write(s4.join("raft/conf"), b"\xff\xfe garbage")?;
    std::fs::write(s4.join("raft/db"), vec![0xAB; 4096])?;
    assert_clear_failure(&agent(&s4, &sock)?, "raft");

    // The state dir is a file.
    let s5 = tmp.path().join("s5");
    std::fs::write(&s5, b"x")?;
    assert_clear_failure(&agent(&s5, &sock)?, "not a directory");

    // init on an existing cluster's state refuses and keeps it.
    let out = Command::new(membrane_binary()?)
        .args([
            "init",
            "--state-dir",
            &s1.display().to_string(),
            "--advertise-addr",
            "127.0.0.1:17700",
        ])
        .output()?;
    assert!(!out.status.success());
    Ok(())
}
