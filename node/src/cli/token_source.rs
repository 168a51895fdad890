//! Where the join token comes from: `--token`, `--token-file` or `MEMBRANE_JOIN_TOKEN`,
//! exactly one. On argv the secret is visible in /proc to every local user, so the file and
//! the environment are the recommended sources; a file others may read is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context};

/// The environment variable that may carry the join token.
pub const TOKEN_ENV: &str = "MEMBRANE_JOIN_TOKEN";

/// Picks the one source given. `env` is the value of [`TOKEN_ENV`], if set and not empty.
pub fn resolve(
    flag: Option<String>,
    file: Option<&Path>,
    env: Option<String>,
) -> anyhow::Result<Option<String>> {
    let env = env.filter(|v| !v.trim().is_empty());
    let given = [flag.is_some(), file.is_some(), env.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given > 1 {
        bail!(
            "the join token was given more than once (--token, --token-file, {TOKEN_ENV}); pass exactly one"
        );
    }
    if let Some(t) = flag {
        return Ok(Some(t));
    }
    if let Some(t) = env {
        return Ok(Some(t.trim().to_string()));
    }
    match file {
        Some(path) => read_token_file(path).map(Some),
        None => Ok(None),
    }
}

/// Reads a token file, refusing one that is not a regular file or that group or others may
/// read or write.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read --token-file {}", path.display()))?;
    if !meta.is_file() {
        bail!("--token-file {} is not a regular file", path.display());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "--token-file {} has mode {mode:03o}: other users may read the join secret; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --token-file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(anyhow!("--token-file {} is empty", path.display()));
    }
    if token.lines().count() > 1 {
        bail!(
            "--token-file {} holds more than one line; it must hold only ID.SECRET",
            path.display()
        );
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(text: &str, mode: u32) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn t10_exactly_one_source() {
        let f = file_with("abc.def\n", 0o600);
        let err = resolve(Some("a.b".into()), Some(f.path()), None).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
        let err = resolve(None, Some(f.path()), Some("a.b".into())).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
        assert_eq!(resolve(None, None, None).unwrap(), None);
        // An empty variable counts as unset.
        assert_eq!(
            resolve(Some("a.b".into()), None, Some(" ".into())).unwrap(),
            Some("a.b".into())
        );
    }

    #[test]
    fn t11_each_source_alone() {
        let f = file_with("  abc.def\n", 0o600);
        assert_eq!(
            resolve(None, Some(f.path()), None).unwrap(),
            Some("abc.def".into())
        );
        assert_eq!(
            resolve(None, None, Some("x.y\n".into())).unwrap(),
            Some("x.y".into())
        );
        assert_eq!(
            resolve(Some("p.q".into()), None, None).unwrap(),
            Some("p.q".into())
        );
    }

    #[test]
    fn t20_a_file_others_can_read_is_refused() {
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let f = file_with("abc.def", mode);
            let err = read_token_file(f.path()).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "mode {mode:o}: {err}");
        }
        let f = file_with("abc.def", 0o400);
        assert_eq!(read_token_file(f.path()).unwrap(), "abc.def");
    }

    #[test]
    fn t21_empty_missing_or_odd_files_are_refused() {
        let f = file_with("\n", 0o600);
        assert!(read_token_file(f.path())
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let f = file_with("a.b\nc.d\n", 0o600);
        assert!(read_token_file(f.path())
            .unwrap_err()
            .to_string()
            .contains("one line"));
        let dir = tempfile::tempdir().unwrap();
        assert!(read_token_file(dir.path())
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        assert!(read_token_file(&dir.path().join("nope"))
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
    }
}
