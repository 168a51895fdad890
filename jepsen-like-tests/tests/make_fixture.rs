//! Writes the state directories of a 2-node cluster to `fixtures/pre-issue-11/`, for the
//! upgrade test (tests/cluster/t51_upgrade_from_pre_issue_11.rs). The fixture must come from
//! the code before issue 11 (commit f84396e): it holds the CA key inside the replicated
//! registry, which is what the upgrade moves out. To regenerate, build that commit and run
//!
//!     MEMBRANE_BIN=/path/to/old/membrane cargo test -p membrane-jepsen --test make_fixture -- --ignored
//!
//! Ignored by default: running it with today's code would make a fixture that tests nothing.
//!
//! The fixture's node certificates were issued on 2026-12-03 for one year (the old lifetime):
//! after 2027-12-03 they are expired, the nodes cannot reach each other, and the upgrade test
//! fails for that reason alone. Regenerate it then (an expired certificate cannot renew).

use std::path::Path;

use membrane_jepsen::{require_root, Cluster};

#[test]
#[ignore = "regenerates a fixture; needs the pre-issue-11 binary in MEMBRANE_BIN"]
fn write_pre_issue_11_fixture() -> anyhow::Result<()> {
    require_root()?;
    anyhow::ensure!(
        std::env::var_os("MEMBRANE_BIN").is_some(),
        "set MEMBRANE_BIN to a membrane binary built from commit f84396e"
    );
    let c = Cluster::start("fixture", 2)?;
    c.cli(1, &["identity", "allocate", "app=fixture"])?;
    c.create_token(3)?;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pre-issue-11");
    c.lab().stop(2)?;
    c.lab().stop(1)?;
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    for i in 1..=2 {
        let dst = out.join(format!("h{i}"));
        std::fs::create_dir_all(&dst)?;
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(c.lab().host(i).state_dir())
            .arg(&dst)
            .status()?;
        anyhow::ensure!(status.success(), "copying host {i}'s state dir failed");
    }
    Ok(())
}
