//! Masquerade of pod traffic leaving the pod pool, with nftables. There is no good
//! nftables crate, so the ruleset goes to `nft -f -` on stdin; one script is one
//! transaction, so the table is replaced atomically.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use super::NetdevError;

/// nft table names: letters, digits, `_` and `-`, starting with a letter; anything else
/// could change the meaning of the script.
fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 64
}

/// The script: declaring the table first makes the delete succeed when it is absent.
fn masquerade_script(table: &str, pod_cidr: Ipv4Net, pod_pool: Ipv4Net, enabled: bool) -> String {
    let mut s = format!("table ip {table}\ndelete table ip {table}\n");
    if enabled {
        s.push_str(&format!(
            "table ip {table} {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {cidr} ip daddr != {pool} masquerade\n\
             \t}}\n\
             }}\n",
            cidr = pod_cidr.trunc(),
            pool = pod_pool.trunc(),
        ));
    }
    s
}

/// Makes the nftables table `ip <table>` (`table` is `membrane` or `ip membrane`) hold
/// exactly one postrouting NAT chain masquerading `ip saddr pod_cidr ip daddr !=
/// pod_pool`, or, with `enabled == false`, removes the table. Idempotent and atomic.
/// Runs `nft` synchronously (a few milliseconds); it acts on the caller's netns.
pub fn ensure_masquerade(
    table: &str,
    pod_cidr: Ipv4Net,
    pod_pool: Ipv4Net,
    enabled: bool,
) -> Result<(), NetdevError> {
    let name = table.strip_prefix("ip ").unwrap_or(table).trim();
    if !valid_table_name(name) {
        return Err(NetdevError::Invalid {
            what: "nftables table name",
            detail: format!("{table:?} (letters, digits, '_' and '-'; the family is always ip)"),
        });
    }
    let script = masquerade_script(name, pod_cidr, pod_pool, enabled);
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetdevError::io("running `nft -f -` (is nftables installed?)", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Written in full before waiting: the script is far below the pipe buffer size.
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetdevError::io("writing the script to `nft -f -`", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetdevError::io("waiting for `nft -f -`", e))?;
    if !out.status.success() {
        return Err(NetdevError::Nft {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    tracing::info!(table = name, %pod_cidr, %pod_pool, enabled, "masquerade table applied");
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn netdev_masquerade_script_shape() {
        let cidr: Ipv4Net = "10.128.1.0/24".parse().expect("literal");
        let pool: Ipv4Net = "10.128.0.0/9".parse().expect("literal");
        let s = masquerade_script("membrane", cidr, pool, true);
        assert!(s.starts_with("table ip membrane\ndelete table ip membrane\n"));
        assert!(s.contains("ip saddr 10.128.1.0/24 ip daddr != 10.128.0.0/9 masquerade"));
        let off = masquerade_script("membrane", cidr, pool, false);
        assert_eq!(off, "table ip membrane\ndelete table ip membrane\n");
        assert!(valid_table_name("membrane"));
        assert!(!valid_table_name("x; flush ruleset"));
        assert!(!valid_table_name(""));
    }
}
