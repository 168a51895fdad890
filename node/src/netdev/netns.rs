//! Running rtnetlink work inside another network namespace.
//!
//! A netlink socket belongs to the namespace of the thread that creates it, and `setns`
//! changes only the calling thread. A tokio worker must never be moved (other tasks run
//! on it), so the work runs on a fresh std thread that joins the namespace and drives
//! its own current-thread runtime; the thread exits when the work is done.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use rtnetlink::Handle;

use super::NetdevError;

/// Opens a namespace file. Missing paths are [`NetdevError::NoSuchNetns`].
pub(crate) fn open_netns(path: &Path) -> Result<File, NetdevError> {
    File::open(path).map_err(|e| NetdevError::NoSuchNetns {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Runs `f` with an rtnetlink handle in the namespace at `path` and returns its result.
/// A path that is not a network namespace is [`NetdevError::NoSuchNetns`] (setns refuses
/// it with EINVAL).
pub(crate) async fn in_netns<F, Fut, T>(path: &Path, f: F) -> Result<T, NetdevError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetdevError>> + 'static,
    T: Send + 'static,
{
    let file = open_netns(path)?;
    let path: PathBuf = path.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    std::thread::Builder::new()
        .name("membrane-netns".into())
        .spawn(move || {
            let result = run_in(&file, &thread_path, f);
            // The receiver is gone only if the caller was cancelled; nothing to report to.
            let _ = tx.send(result);
        })
        .map_err(|e| NetdevError::io("spawning the netns worker thread", e))?;
    rx.await.map_err(|_| {
        NetdevError::io(
            format!("working in netns {}", path.display()),
            std::io::Error::other("the netns worker thread panicked"),
        )
    })?
}

fn run_in<F, Fut, T>(file: &File, path: &Path, f: F) -> Result<T, NetdevError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, NetdevError>>,
{
    nix::sched::setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| NetdevError::NoSuchNetns {
        path: path.to_path_buf(),
        reason: format!("setns: {e}"),
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NetdevError::io("building the netns worker runtime", e))?;
    rt.block_on(async move {
        // Created after setns, so the socket lives in the target namespace.
        let handle = super::link::connect()?;
        f(handle).await
    })
}

/// Why a path cannot be an endpoint's network namespace.
#[derive(Debug)]
pub enum NetnsProblem {
    /// Nothing at the path.
    Missing,
    /// It could not be inspected (permissions, I/O).
    Unreadable(std::io::Error),
    /// It is a file, but not a namespace file; the filesystem type says what it is.
    NotANamespace { fs_type: i64 },
    /// It is the caller's own network namespace: moving an endpoint's side there would put
    /// the endpoint's address and default route on the node.
    OwnNamespace,
}

/// Checks that `path` is a namespace file (nsfs; procfs on kernels before 3.19) other than
/// the caller's own network namespace, so a bad path fails before anything is allocated.
/// The CNI plugin and the agent both ask this before an add.
pub fn check_netns_path(path: &Path) -> Result<(), NetnsProblem> {
    use std::os::unix::fs::MetadataExt;

    use nix::sys::statfs::{statfs, NSFS_MAGIC, PROC_SUPER_MAGIC};
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => NetnsProblem::Missing,
        _ => NetnsProblem::Unreadable(e),
    })?;
    let fs = statfs(path).map_err(|e| NetnsProblem::Unreadable(e.into()))?;
    let fs_type = fs.filesystem_type();
    if fs_type != NSFS_MAGIC && fs_type != PROC_SUPER_MAGIC {
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        return Err(NetnsProblem::NotANamespace {
            fs_type: fs_type.0 as i64,
        });
    }
    if let Ok(own) = std::fs::metadata("/proc/self/ns/net") {
        if own.dev() == meta.dev() && own.ino() == meta.ino() {
            return Err(NetnsProblem::OwnNamespace);
        }
    }
    Ok(())
}
