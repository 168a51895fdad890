//! Local API sockets (agent.sock, plugin.sock) created with their final mode from the start.
//!
//! `bind` then `chmod` leaves a window in which the socket has the umask's mode, and a
//! `chmod` on a path an attacker swapped for a symlink changes the mode of whatever it points
//! to. So the socket is bound inside a fresh 0700 directory beside the target, given its mode
//! and group there, where nobody else can reach it, and renamed into place (rename(2)
//! replaces the target atomically and never follows a symlink at the target). A target that
//! is a symlink, or anything other than a stale socket, is refused.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Who may use a local socket besides root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Mode 0600: the owner (root) only.
    OwnerOnly,
    /// Mode 0660 with this group.
    Group(u32),
}

impl Access {
    /// `--socket-group NAME`, looked up in the group database; None: owner only.
    pub fn from_group_name(name: Option<&str>) -> Result<Access, SocketError> {
        let Some(name) = name else {
            return Ok(Access::OwnerOnly);
        };
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(Access::Group(g.gid.as_raw())),
            Ok(None) => Err(SocketError::NoSuchGroup(name.to_string())),
            Err(e) => Err(SocketError::Io {
                what: format!("looking up group {name:?}"),
                source: std::io::Error::from(e),
            }),
        }
    }

    fn mode(self) -> u32 {
        match self {
            Access::OwnerOnly => 0o600,
            Access::Group(_) => 0o660,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{0} is a symlink; refusing to replace it (remove it or pass another socket path)")]
    Symlink(PathBuf),
    #[error("{0} exists and is not a socket; remove it or pass another socket path")]
    NotASocket(PathBuf),
    #[error("the parent of {0} is not a directory; pass a socket path inside a directory")]
    ParentNotDirectory(PathBuf),
    #[error("another agent is serving {0}; stop it first or pass a different socket path")]
    InUse(PathBuf),
    #[error("group {0:?} does not exist; create it or drop --socket-group")]
    NoSuchGroup(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SocketError {
    let what = what.into();
    move |source| SocketError::Io { what, source }
}

/// Binds a Unix socket at `path` with `access`, with no moment at which anyone else could
/// connect to it or change it. Needs a tokio runtime (the listener is registered with it).
pub fn bind(path: &Path, access: Access) -> Result<tokio::net::UnixListener, SocketError> {
    let std_listener = bind_std(path, access)?;
    std_listener
        .set_nonblocking(true)
        .map_err(io(format!("setting {} non-blocking", path.display())))?;
    tokio::net::UnixListener::from_std(std_listener)
        .map_err(io(format!("registering {}", path.display())))
}

/// The blocking part of [`bind`].
pub fn bind_std(
    path: &Path,
    access: Access,
) -> Result<std::os::unix::net::UnixListener, SocketError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(SocketError::ParentNotDirectory(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&parent)
                .map_err(io(format!("cannot create {}", parent.display())))?;
        }
        Err(e) => return Err(io(format!("cannot inspect {}", parent.display()))(e)),
    }
    check_target(path)?;

    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sock".into());
    let staging = parent.join(format!(
        ".{name}.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io(format!("cannot create {}", staging.display())))?;
    let result = bind_in(&staging, path, access);
    // The staging directory is empty once the socket has moved (or on failure).
    let _ = std::fs::remove_file(staging.join("sock"));
    let _ = std::fs::remove_dir(&staging);
    result
}

fn bind_in(
    staging: &Path,
    path: &Path,
    access: Access,
) -> Result<std::os::unix::net::UnixListener, SocketError> {
    let tmp = staging.join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&tmp)
        .map_err(io(format!("cannot bind {}", tmp.display())))?;
    if let Access::Group(gid) = access {
        std::os::unix::fs::chown(&tmp, None, Some(gid))
            .map_err(io(format!("cannot give {} to group {gid}", tmp.display())))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(access.mode()))
        .map_err(io(format!("cannot set the mode of {}", tmp.display())))?;
    // Checked again right before the rename: the window between is only a stale socket's
    // replacement, and rename never follows a symlink placed at the target.
    check_target(path)?;
    std::fs::rename(&tmp, path).map_err(io(format!(
        "cannot move the socket into place at {}",
        path.display()
    )))?;
    Ok(listener)
}

/// Refuses a target that is a symlink, not a socket, or a live agent's socket.
fn check_target(path: &Path) -> Result<(), SocketError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("cannot inspect {}", path.display()))(e)),
        Ok(m) if m.file_type().is_symlink() => Err(SocketError::Symlink(path.to_path_buf())),
        Ok(m) if !m.file_type().is_socket() => Err(SocketError::NotASocket(path.to_path_buf())),
        // A socket left by a crashed agent is replaced; a live agent's never.
        Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
            Err(SocketError::InUse(path.to_path_buf()))
        }
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn t10_owner_only_socket_has_mode_0600_and_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let l = bind_std(&path, Access::OwnerOnly).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        l.accept().unwrap();
        // Nothing is left behind but the socket.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("agent.sock")]);
    }

    #[test]
    fn t11_group_socket_has_mode_0660_and_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.sock");
        // Our own primary group: chown to it needs no privilege.
        let gid = nix::unistd::getegid().as_raw();
        let _l = bind_std(&path, Access::Group(gid)).unwrap();
        assert_eq!(mode_of(&path), 0o660);
        assert_eq!(std::fs::metadata(&path).unwrap().gid(), gid);
    }

    #[test]
    fn t20_a_symlink_target_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("agent.sock");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = bind_std(&path, Access::OwnerOnly).unwrap_err();
        assert!(matches!(err, SocketError::Symlink(_)), "{err}");
        assert_eq!(mode_of(&victim), 0o600);
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn t21_parent_not_a_directory_and_non_socket_targets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = bind_std(&file.join("agent.sock"), Access::OwnerOnly).unwrap_err();
        assert!(matches!(err, SocketError::ParentNotDirectory(_)), "{err}");
        let err = bind_std(&file, Access::OwnerOnly).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }

    #[test]
    fn t22_a_stale_socket_is_replaced_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let live = bind_std(&path, Access::OwnerOnly).unwrap();
        let err = bind_std(&path, Access::OwnerOnly).unwrap_err();
        assert!(matches!(err, SocketError::InUse(_)), "{err}");
        drop(live);
        // The file stays behind after its listener is gone: stale, so it is replaced.
        assert!(path.exists());
        let _l = bind_std(&path, Access::OwnerOnly).unwrap();
        std::os::unix::net::UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn t23_missing_parent_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/membrane/agent.sock");
        let _l = bind_std(&path, Access::OwnerOnly).unwrap();
        assert_eq!(mode_of(&path), 0o600);
    }

    #[test]
    fn t24_unknown_group_is_a_clear_error() {
        let err = Access::from_group_name(Some("no-such-group-membrane-test")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert_eq!(Access::from_group_name(None).unwrap(), Access::OwnerOnly);
    }
}
