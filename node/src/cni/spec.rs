//! Types of the CNI specification (1.0.0, and the 0.3.x/0.4.0 result shape we also answer
//! in): versions, commands, the result and the version answer. Pure data, no IO.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{CniError, ErrorCode};

/// The newest version we implement; VERSION answers in it.
pub const CURRENT_VERSION: &str = "1.0.0";

/// Every cniVersion a network config may ask for. 0.1.0/0.2.0 had another result shape.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// A parsed `major.minor.patch`, ordered, so "CHECK needs >= 0.4.0" is a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);

    /// Parses "1.0.0" (or "1.0", as some old configs wrote it).
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next().unwrap_or(Some(0))?;
        if parts.next().is_some() {
            return None;
        }
        Some(Version(major, minor, patch))
    }
}

/// Checks that a config's cniVersion is one we answer in (code 1 otherwise).
pub fn check_supported(version: &str) -> Result<Version, CniError> {
    match Version::parse(version) {
        Some(v) if SUPPORTED_VERSIONS.contains(&version) => Ok(v),
        _ => Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "cniVersion {version:?} is not supported by membrane-cni; set \"cniVersion\" to \
                 one of {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        )
        .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", ")))),
    }
}

/// CNI_COMMAND.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    /// CNI 1.1.0; refused cleanly since we implement 1.0.0.
    Status,
    /// CNI 1.1.0; refused cleanly since we implement 1.0.0.
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command, CniError> {
        match s {
            "ADD" => Ok(Command::Add),
            "DEL" => Ok(Command::Del),
            "CHECK" => Ok(Command::Check),
            "VERSION" => Ok(Command::Version),
            "STATUS" => Ok(Command::Status),
            "GC" => Ok(Command::Gc),
            other => Err(CniError::env(format!(
                "unknown CNI_COMMAND {other:?}; membrane-cni implements ADD, DEL, CHECK and VERSION \
                 (CNI 1.0.0)"
            ))),
        }
    }
}

/// The VERSION answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    pub fn ours() -> Self {
        VersionInfo {
            cni_version: CURRENT_VERSION.into(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// An ADD result (also what `prevResult` holds). Unknown fields are kept (`extra`) so that a
/// result passed down a chain loses nothing another plugin put there.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The netns path for a container-side interface; absent for the host side.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6": required before 1.0.0, removed in 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// CIDR notation, "10.128.0.5/32".
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// DNS settings; we set none (the runtime configures resolv.conf), so this prints as `{}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl CniResult {
    /// The result as the given (supported) version writes it: 1.0.0 dropped `ips[].version`,
    /// which 0.3.x and 0.4.0 require.
    pub fn in_version(mut self, version: &str) -> CniResult {
        let want_ip_version = Version::parse(version).is_some_and(|v| v < Version::V1_0_0);
        for ip in &mut self.ips {
            ip.version = if want_ip_version {
                Some(if ip.address.contains(':') { "6" } else { "4" }.to_string())
            } else {
                None
            };
        }
        self.cni_version = version.to_string();
        self
    }

    pub fn to_json(&self) -> String {
        // Our own structs of strings and maps always serialise.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Version::parse("1.0.0"), Some(Version(1, 0, 0)));
        assert_eq!(Version::parse("0.4"), Some(Version(0, 4, 0)));
        assert_eq!(Version::parse("1.0.0.0"), None);
        assert_eq!(Version::parse("x"), None);
        assert!(Version::parse("0.3.1").unwrap() < Version::V0_4_0);
        assert!(check_supported("1.0.0").is_ok());
        assert!(check_supported("0.3.1").is_ok());
    }

    #[test]
    fn unsupported_version_is_code_1_naming_the_supported_ones() {
        for v in ["0.2.0", "1.1.0", "2.0.0", "", "one"] {
            let e = check_supported(v).unwrap_err();
            assert_eq!(e.code, ErrorCode::IncompatibleVersion, "{v}");
            assert!(e.msg.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0"), "{}", e.msg);
        }
    }

    #[test]
    fn unknown_command_is_code_4_naming_it() {
        let e = Command::parse("FROB").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(e.msg.contains("\"FROB\""), "{}", e.msg);
        assert_eq!(Command::parse("ADD").unwrap(), Command::Add);
        assert_eq!(Command::parse("GC").unwrap(), Command::Gc);
    }

    #[test]
    fn version_answer_is_exact() {
        assert_eq!(
            serde_json::to_string(&VersionInfo::ours()).unwrap(),
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}"#
        );
    }

    #[test]
    fn ip_version_field_depends_on_the_cni_version() {
        let r = CniResult {
            ips: vec![IpConfig {
                address: "10.0.0.2/32".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let old: Value = serde_json::from_str(&r.clone().in_version("0.4.0").to_json()).unwrap();
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["cniVersion"], "0.4.0");
        let new: Value = serde_json::from_str(&r.in_version("1.0.0").to_json()).unwrap();
        assert!(new["ips"][0].get("version").is_none());
    }

    #[test]
    fn results_round_trip_keeping_unknown_fields() {
        let text = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mtu":1450}],
            "ips":[{"address":"10.0.0.2/24","interface":0}],"dns":{},"custom":1}"#;
        let r: CniResult = serde_json::from_str(text).unwrap();
        let back: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back["interfaces"][0]["mtu"], 1450);
        assert_eq!(back["custom"], 1);
    }
}
