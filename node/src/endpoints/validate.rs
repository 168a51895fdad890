//! Checking an endpoint add before anything is allocated: the request's fields (pure) and
//! its network namespace (one stat of the path). A refused add changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use membrane_consensus::registry::LabelSet;

use super::EndpointError;
use crate::netdev;

/// The interface name CNI uses when none is given.
pub const DEFAULT_IFNAME: &str = "eth0";

/// An add request after validation.
#[derive(Clone, Debug)]
pub struct AddRequest {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub labels: LabelSet,
}

/// Checks that `path` is a network namespace other than the agent's own (see
/// [`netdev::check_netns_path`]), so a bad path fails before anything is allocated.
pub fn check_netns(path: &str) -> Result<(), EndpointError> {
    use netdev::NetnsProblem;
    netdev::check_netns_path(Path::new(path)).map_err(|p| match p {
        NetnsProblem::Missing => EndpointError::NoSuchNetns(format!(
            "network namespace {path} does not exist; pass the path of a live one, e.g. /var/run/netns/NAME or /proc/PID/ns/net"
        )),
        NetnsProblem::Unreadable(e) => EndpointError::NoSuchNetns(format!(
            "network namespace {path} cannot be inspected ({e})"
        )),
        NetnsProblem::NotANamespace { fs_type } => EndpointError::NoSuchNetns(format!(
            "{path} is not a network namespace (filesystem type {fs_type:#x}); pass e.g. /var/run/netns/NAME"
        )),
        NetnsProblem::OwnNamespace => EndpointError::Invalid(format!(
            "{path} is the node's own network namespace; pass the endpoint's"
        )),
    })
}

/// Validates the parts of an add that need no registry: the fields ([`validate_fields`]),
/// then that the namespace exists and is not the node's own ([`check_netns`]).
pub fn validate_add(
    container_id: &str,
    netns: &str,
    ifname: &str,
    labels: &BTreeMap<String, String>,
) -> Result<AddRequest, EndpointError> {
    let add = validate_fields(container_id, netns, ifname, labels)?;
    check_netns(netns)?;
    Ok(add)
}

/// The pure half of [`validate_add`]: every field checked and normalised (the interface
/// name defaults to [`DEFAULT_IFNAME`], labels parsed into a normalised set), nothing read
/// from the system.
pub fn validate_fields(
    container_id: &str,
    netns: &str,
    ifname: &str,
    labels: &BTreeMap<String, String>,
) -> Result<AddRequest, EndpointError> {
    let ifname = ifname_or_default(ifname);
    membrane_consensus::registry::validate_container_id(container_id)
        .map_err(EndpointError::Invalid)?;
    membrane_consensus::registry::validate_ifname(ifname).map_err(EndpointError::Invalid)?;
    if netns.is_empty() {
        return Err(EndpointError::Invalid(
            "the network namespace path is empty (CNI_NETNS)".into(),
        ));
    }
    membrane_consensus::registry::validate_netns(netns).map_err(EndpointError::Invalid)?;
    if labels.is_empty() {
        return Err(EndpointError::Invalid(
            "an endpoint needs at least one label for its security identity; pass labels (e.g. CNI_ARGS label_app=web, or runtimeConfig.labels)".into(),
        ));
    }
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let labels = LabelSet::parse(&pairs).map_err(|e| EndpointError::Invalid(e.to_string()))?;
    Ok(AddRequest {
        container_id: container_id.to_string(),
        netns: netns.to_string(),
        ifname: ifname.to_string(),
        labels,
    })
}

/// CNI's default interface name when the request leaves it empty.
pub(super) fn ifname_or_default(ifname: &str) -> &str {
    if ifname.is_empty() {
        DEFAULT_IFNAME
    } else {
        ifname
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn invalid(r: Result<AddRequest, EndpointError>) -> String {
        match r {
            Err(EndpointError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn an_accepted_add_is_normalised() {
        let add = validate_fields(
            "abc123",
            "/var/run/netns/web",
            "",
            &labels(&[("tier", "front"), ("app", "web")]),
        )
        .unwrap();
        assert_eq!(add.container_id, "abc123");
        assert_eq!(add.netns, "/var/run/netns/web");
        assert_eq!(add.ifname, DEFAULT_IFNAME, "an empty ifname is CNI's eth0");
        assert_eq!(add.labels.to_strings(), vec!["app=web", "tier=front"]);
        let named = validate_fields("abc123", "/proc/42/ns/net", "net1", &labels(&[("a", "b")]));
        assert_eq!(named.unwrap().ifname, "net1");
    }

    #[test]
    fn every_bad_field_is_refused_with_what_to_do() {
        let l = labels(&[("app", "web")]);
        let m = invalid(validate_fields("", "/var/run/netns/x", "eth0", &l));
        assert!(m.contains("container id is empty"), "{m}");
        let m = invalid(validate_fields("a/b", "/var/run/netns/x", "eth0", &l));
        assert!(m.contains("contains '/'"), "{m}");
        let m = invalid(validate_fields(
            "a",
            "/var/run/netns/x",
            "much-too-long-name",
            &l,
        ));
        assert!(m.contains("1 to 15 characters"), "{m}");
        let m = invalid(validate_fields("a", "/var/run/netns/x", "eth:0", &l));
        assert!(m.contains("Linux does not allow"), "{m}");
        let m = invalid(validate_fields("a", "", "eth0", &l));
        assert!(m.contains("CNI_NETNS"), "{m}");
        let m = invalid(validate_fields("a", "netns/x", "eth0", &l));
        assert!(m.contains("not an absolute path"), "{m}");
        let m = invalid(validate_fields(
            "a",
            "/var/run/netns/x",
            "eth0",
            &BTreeMap::new(),
        ));
        assert!(m.contains("at least one label"), "{m}");
        let m = invalid(validate_fields(
            "a",
            "/var/run/netns/x",
            "eth0",
            &labels(&[("bad key!", "v")]),
        ));
        assert!(!m.is_empty());
    }

    #[test]
    fn the_namespace_must_exist_be_one_and_not_be_the_nodes_own() {
        let l = labels(&[("app", "web")]);
        let dir = std::env::temp_dir().join(format!("membrane-validate-{}", std::process::id()));
        let gone = dir.join("gone").display().to_string();
        match validate_add("a", &gone, "eth0", &l) {
            Err(EndpointError::NoSuchNetns(m)) => assert!(m.contains("does not exist"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A plain file is no namespace.
        let file =
            std::env::temp_dir().join(format!("membrane-validate-{}.file", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let r = validate_add("a", &file.display().to_string(), "eth0", &l);
        let _ = std::fs::remove_file(&file);
        match r {
            Err(EndpointError::NoSuchNetns(m)) => {
                assert!(m.contains("not a network namespace"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let m = invalid(validate_add("a", "/proc/self/ns/net", "eth0", &l));
        assert!(m.contains("node's own network namespace"), "{m}");
        // A bad field is refused before the path is looked at.
        let m = invalid(validate_add("", &gone, "eth0", &l));
        assert!(m.contains("container id is empty"), "{m}");
    }
}
