//! The CNI_* environment variables: which each command requires, and their validation
//! (CNI 1.0.0 section "Parameters"). Pure: variables come from a lookup function, so the
//! tests need not touch the process environment.

use std::ffi::OsString;

use super::error::CniError;
use super::spec::Command;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;

/// A validated invocation. Fields a command does not need are empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    pub container_id: String,
    /// Empty when a DEL came without CNI_NETNS (the spec allows it).
    pub netns: String,
    pub ifname: String,
    /// Raw CNI_ARGS, parsed by `args::parse` only when the command needs labels.
    pub cni_args: String,
}

/// Reads CNI_COMMAND.
pub fn command(lookup: &dyn Fn(&str) -> Option<OsString>) -> Result<Command, CniError> {
    match var(lookup, "CNI_COMMAND")? {
        Some(c) => Command::parse(&c),
        None => Err(CniError::env(
            "CNI_COMMAND is not set; membrane-cni is a CNI plugin, run by a container runtime \
             with CNI_COMMAND=ADD, DEL, CHECK or VERSION",
        )),
    }
}

/// Reads and validates the variables `command` needs.
pub fn invocation(
    command: Command,
    lookup: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Invocation, CniError> {
    let (need_netns, needs_ids) = match command {
        Command::Add | Command::Check => (true, true),
        // The spec lets DEL come without a netns (the sandbox may be gone already).
        Command::Del => (false, true),
        Command::Version | Command::Status | Command::Gc => (false, false),
    };
    if !needs_ids {
        return Ok(Invocation::default());
    }
    let container_id = required(lookup, "CNI_CONTAINERID", command)?;
    validate_container_id(&container_id)?;
    let ifname = required(lookup, "CNI_IFNAME", command)?;
    validate_ifname(&ifname)?;
    let netns = if need_netns {
        required(lookup, "CNI_NETNS", command)?
    } else {
        var(lookup, "CNI_NETNS")?.unwrap_or_default()
    };
    if !netns.is_empty() && !netns.starts_with('/') {
        return Err(CniError::env(format!(
            "CNI_NETNS {netns:?} is not an absolute path; pass the namespace's path, like \
             /run/netns/NAME or /proc/PID/ns/net"
        )));
    }
    let cni_args = var(lookup, "CNI_ARGS")?.unwrap_or_default();
    Ok(Invocation {
        container_id,
        netns,
        ifname,
        cni_args,
    })
}

/// A variable as UTF-8; empty counts as unset, as in the reference implementation.
fn var(lookup: &dyn Fn(&str) -> Option<OsString>, name: &str) -> Result<Option<String>, CniError> {
    match lookup(name) {
        None => Ok(None),
        Some(v) => match v.into_string() {
            Ok(s) if s.is_empty() => Ok(None),
            Ok(s) => Ok(Some(s)),
            Err(_) => Err(CniError::env(format!(
                "{name} is not valid UTF-8; pass it as plain text"
            ))),
        },
    }
}

fn required(
    lookup: &dyn Fn(&str) -> Option<OsString>,
    name: &str,
    command: Command,
) -> Result<String, CniError> {
    var(lookup, name)?.ok_or_else(|| {
        CniError::env(format!(
            "{name} is not set; CNI {command:?} needs it (the runtime sets CNI_CONTAINERID, \
             CNI_NETNS and CNI_IFNAME)"
        ))
    })
}

/// CNI 1.0.0: alphanumeric first, then alphanumerics, '_', '.', '-'.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(CniError::env(format!(
            "CNI_CONTAINERID {id:?} is invalid; it must start with a letter or digit and contain \
             only letters, digits, '_', '.' and '-'"
        )))
    }
}

/// What the kernel accepts as an interface name.
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = if name.len() > MAX_IFNAME_LEN {
        Some(format!("is longer than {MAX_IFNAME_LEN} bytes"))
    } else if name == "." || name == ".." {
        Some("is not a valid name".to_string())
    } else {
        name.chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
            .map(|c| format!("contains {c:?}"))
    };
    match bad {
        None => Ok(()),
        Some(why) => Err(CniError::env(format!(
            "CNI_IFNAME {name:?} {why}; use an interface name like eth0"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::error::ErrorCode;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).map(OsString::from)
    }

    const FULL: [(&str, &str); 4] = [
        ("CNI_CONTAINERID", "abc-1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "label_a=b"),
    ];

    #[test]
    fn missing_command_is_code_4() {
        let e = command(&lookup(&[])).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(e.msg.contains("CNI_COMMAND"));
        let e = command(&lookup(&[("CNI_COMMAND", "frob")])).unwrap_err();
        assert!(e.msg.contains("\"frob\""), "{}", e.msg);
    }

    #[test]
    fn add_needs_netns_del_does_not() {
        let no_netns: Vec<_> = FULL
            .iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .copied()
            .collect();
        for cmd in [Command::Add, Command::Check] {
            let e = invocation(cmd, &lookup(&no_netns)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnvironment);
            assert!(e.msg.contains("CNI_NETNS is not set"), "{}", e.msg);
        }
        let inv = invocation(Command::Del, &lookup(&no_netns)).unwrap();
        assert_eq!(inv.netns, "");
        let inv = invocation(Command::Add, &lookup(&FULL)).unwrap();
        assert_eq!(inv.container_id, "abc-1");
        assert_eq!(inv.netns, "/run/netns/x");
        assert_eq!(inv.cni_args, "label_a=b");
        // VERSION needs nothing.
        assert!(invocation(Command::Version, &lookup(&[])).is_ok());
    }

    #[test]
    fn missing_or_invalid_ids_are_code_4() {
        let with = |k: &str, v: &str| -> Vec<(String, String)> {
            FULL.iter()
                .filter(|(n, _)| *n != k)
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .chain((!v.is_empty() || k == "CNI_NETNS").then(|| (k.to_string(), v.into())))
                .collect()
        };
        let cases = [
            ("CNI_CONTAINERID", "", "CNI_CONTAINERID is not set"),
            ("CNI_CONTAINERID", "-abc", "is invalid"),
            ("CNI_CONTAINERID", "a/b", "is invalid"),
            ("CNI_IFNAME", "", "CNI_IFNAME is not set"),
            ("CNI_IFNAME", "averyveryverylongname", "longer than 15"),
            ("CNI_IFNAME", "eth/0", "contains '/'"),
            ("CNI_IFNAME", "..", "not a valid name"),
            ("CNI_NETNS", "", "CNI_NETNS is not set"),
            ("CNI_NETNS", "run/netns/x", "not an absolute path"),
        ];
        for (k, v, want) in cases {
            let vars = with(k, v);
            let vars: Vec<(&str, &str)> =
                vars.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let e = invocation(Command::Add, &lookup(&vars)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnvironment, "{k}={v}");
            assert!(e.msg.contains(want), "{k}={v}: {}", e.msg);
        }
    }
}
