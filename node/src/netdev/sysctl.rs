//! Sysctls through /proc/sys. The net.* tree under /proc/sys belongs to the network
//! namespace of the thread that opens the file, so these act on the caller's namespace.

use std::path::PathBuf;

use super::NetdevError;

/// Turns `net.ipv4.ip_forward` or `net/ipv4/ip_forward` into /proc/sys/net/ipv4/ip_forward.
/// The slash form is needed for keys with an interface name that contains a dot.
fn sysctl_path(key: &str) -> Result<PathBuf, NetdevError> {
    let rel = if key.contains('/') {
        key.trim_start_matches('/').to_string()
    } else {
        key.replace('.', "/")
    };
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(NetdevError::Invalid {
            what: "sysctl key",
            detail: format!("{key:?} (expected e.g. net.ipv4.ip_forward)"),
        });
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// Writes `value` to the sysctl `key` (`net.ipv4.ip_forward` or `net/ipv4/ip_forward`).
pub fn set_sysctl(key: &str, value: &str) -> Result<(), NetdevError> {
    let path = sysctl_path(key)?;
    std::fs::write(&path, value)
        .map_err(|e| NetdevError::io(format!("writing {value:?} to {}", path.display()), e))?;
    tracing::debug!(key, value, "sysctl set");
    Ok(())
}

/// Reads the sysctl `key`, trimmed.
pub fn get_sysctl(key: &str) -> Result<String, NetdevError> {
    let path = sysctl_path(key)?;
    let v = std::fs::read_to_string(&path)
        .map_err(|e| NetdevError::io(format!("reading {}", path.display()), e))?;
    Ok(v.trim().to_string())
}
