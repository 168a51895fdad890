//! Running the helper commands (`ip`, `nft`) that build and break the lab.
//!
//! They are run as programs rather than through netlink so that every step the lab takes can
//! be replayed by hand from the error message when something goes wrong.

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context};

/// Runs `program args...`, failing with its stderr when it exits non-zero.
pub(crate) fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> anyhow::Result<Output> {
    run_with_stdin(program, args, None)
}

/// Like [`run`], feeding `stdin` to the program (nft reads whole rulesets this way, which
/// makes a ruleset change one atomic transaction).
pub(crate) fn run_with_stdin<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    stdin: Option<&str>,
) -> anyhow::Result<Output> {
    let line = render(program, args);
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{line}`"))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().context("child has no stdin pipe")?;
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("cannot feed `{line}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("cannot wait for `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// The command as one would type it, for error messages.
pub(crate) fn render<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut line = program.to_string();
    for a in args {
        line.push(' ');
        line.push_str(&a.as_ref().to_string_lossy());
    }
    line
}
