//! The network configuration on stdin: the spec's fields (cniVersion, name, type, dns,
//! args, runtimeConfig, prevResult) and ours (socket, queueDir, labels). Each field is read
//! on its own so an error names the field and says what it should be.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::error::{CniError, ErrorCode};
use super::labels::{self, Labels};
use super::spec::{self, CniResult, Dns, Version};

pub const DEFAULT_SOCKET: &str = "/run/membrane/plugin.sock";
pub const DEFAULT_QUEUE_DIR: &str = "/var/lib/membrane/cni-queue";

/// How much of the config to validate. DEL only needs to know where the agent and the queue
/// are: it must succeed whenever it can, so fields it does not use cannot fail it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    Full,
    DeleteOnly,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub version: Version,
    pub name: String,
    pub plugin_type: String,
    pub socket: PathBuf,
    pub queue_dir: PathBuf,
    /// The config's own "labels".
    pub labels: Labels,
    /// "args": {"cni": {"labels": ...}}.
    pub args_labels: Labels,
    /// "runtimeConfig": {"labels": ...}.
    pub runtime_labels: Labels,
    /// "dns", passed through into the ADD result.
    pub dns: Dns,
    pub prev_result: Option<CniResult>,
}

/// The cniVersion to write an error in: the config's, when it is readable and supported,
/// else ours. Never fails, since it serves the error path.
pub fn error_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| spec::CURRENT_VERSION.to_string())
}

pub fn parse(stdin: &[u8], strictness: Strictness) -> Result<NetConf, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::config(
            "no network configuration on stdin; the runtime passes the plugin's config from \
             /etc/cni/net.d/ (see docs/cni.md for an example)",
        ));
    }
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            ErrorCode::DecodingFailure,
            format!("the network configuration on stdin is not valid JSON: {e}; fix the file in /etc/cni/net.d/"),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(CniError::config(
            "the network configuration must be a JSON object, like \
             {\"cniVersion\":\"1.0.0\",\"name\":\"membrane\",\"type\":\"membrane-cni\"}",
        ));
    };

    let cni_version = required_string(&obj, "cniVersion", "\"1.0.0\"")?;
    let version = spec::check_supported(&cni_version)?;
    let name = required_string(&obj, "name", "\"membrane\"")?;
    validate_network_name(&name)?;
    let plugin_type = required_string(&obj, "type", "\"membrane-cni\"")?;
    let socket = optional_path(&obj, "socket")?.unwrap_or_else(|| DEFAULT_SOCKET.into());
    let queue_dir = optional_path(&obj, "queueDir")?.unwrap_or_else(|| DEFAULT_QUEUE_DIR.into());

    let mut conf = NetConf {
        cni_version,
        version,
        name,
        plugin_type,
        socket,
        queue_dir,
        labels: Labels::new(),
        args_labels: Labels::new(),
        runtime_labels: Labels::new(),
        dns: Dns::default(),
        prev_result: None,
    };
    if strictness == Strictness::DeleteOnly {
        return Ok(conf);
    }

    if let Some(ipam) = obj.get("ipam") {
        return Err(unsupported(
            "ipam",
            ipam,
            "membrane allocates addresses from the node's pod CIDR; remove \"ipam\"",
        ));
    }
    if let Some(v) = obj.get("labels") {
        conf.labels = label_map(v, "labels")?;
    }
    if let Some(args) = obj.get("args") {
        let args = as_object(args, "args")?;
        if let Some(cni) = args.get("cni") {
            let cni = as_object(cni, "args.cni")?;
            if let Some(ips) = cni.get("ips") {
                return Err(unsupported(
                    "args.cni.ips",
                    ips,
                    "membrane chooses the address itself; remove args.cni.ips",
                ));
            }
            if let Some(v) = cni.get("labels") {
                conf.args_labels = label_map(v, "args.cni.labels")?;
            }
        }
    }
    if let Some(rc) = obj.get("runtimeConfig") {
        let rc = as_object(rc, "runtimeConfig")?;
        for field in ["ips", "mac"] {
            if let Some(v) = rc.get(field) {
                return Err(unsupported(
                    &format!("runtimeConfig.{field}"),
                    v,
                    &format!(
                        "membrane chooses the {field} itself; remove the \"{field}\" capability \
                         from the plugin's \"capabilities\""
                    ),
                ));
            }
        }
        if let Some(v) = rc.get("labels") {
            conf.runtime_labels = label_map(v, "runtimeConfig.labels")?;
        }
    }
    if let Some(v) = obj.get("dns") {
        conf.dns = serde_json::from_value(v.clone()).map_err(|e| {
            CniError::config(format!(
                "\"dns\" is invalid: {e}; use {{\"nameservers\":[\"10.0.0.10\"],\"search\":[...]}}"
            ))
        })?;
    }
    if let Some(v) = obj.get("prevResult") {
        conf.prev_result = Some(serde_json::from_value(v.clone()).map_err(|e| {
            CniError::config(format!(
                "\"prevResult\" is not a CNI result: {e}; the runtime should pass the result of \
                 the previous plugin unchanged"
            ))
        })?);
    }
    Ok(conf)
}

fn required_string(
    obj: &Map<String, Value>,
    field: &str,
    example: &str,
) -> Result<String, CniError> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => Err(CniError::config(format!(
            "the network configuration has no \"{field}\"; add \"{field}\": {example}"
        ))),
        Some(other) => Err(CniError::config(format!(
            "\"{field}\" must be a string, not {other}; use \"{field}\": {example}"
        ))),
    }
}

fn optional_path(obj: &Map<String, Value>, field: &str) -> Result<Option<PathBuf>, CniError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.starts_with('/') => Ok(Some(PathBuf::from(s))),
        Some(other) => Err(CniError::config(format!(
            "\"{field}\" must be an absolute path as a string, not {other}; remove it for the \
             default or use e.g. \"{}\"",
            if field == "socket" {
                DEFAULT_SOCKET
            } else {
                DEFAULT_QUEUE_DIR
            }
        ))),
    }
}

/// CNI 1.0.0: the network name starts with an alphanumeric, then alphanumerics, '_', '.', '-'.
fn validate_network_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::config(format!(
            "network name {name:?} is invalid; it must start with a letter or digit and contain \
             only letters, digits, '_', '.' and '-'"
        )))
    }
}

fn as_object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, CniError> {
    v.as_object()
        .ok_or_else(|| CniError::config(format!("\"{field}\" must be a JSON object, not {v}")))
}

fn unsupported(field: &str, value: &Value, what_to_do: &str) -> CniError {
    // The spec wants the key and the value of the unsupported field in the message.
    CniError::new(
        ErrorCode::UnsupportedField,
        format!("unsupported field {field} = {value}; {what_to_do}"),
    )
}

/// Labels as a map {"app": "web"} or, as the CNI args convention writes them, a list
/// [{"key": "app", "value": "web"}].
fn label_map(v: &Value, field: &str) -> Result<Labels, CniError> {
    let shape_error = || {
        CniError::config(format!(
            "\"{field}\" must map label keys to string values, like {{\"app\": \"web\"}} or \
             [{{\"key\": \"app\", \"value\": \"web\"}}], not {v}"
        ))
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                let val = val.as_str().ok_or_else(shape_error)?;
                pairs.push((k.clone(), val.to_string()));
            }
        }
        Value::Array(items) => {
            for item in items {
                let key = item.get("key").and_then(Value::as_str);
                let value = item.get("value").and_then(Value::as_str);
                let (Some(key), Some(value)) = (key, value) else {
                    return Err(shape_error());
                };
                pairs.push((key.to_string(), value.to_string()));
            }
        }
        _ => return Err(shape_error()),
    }
    let mut out = Labels::new();
    for (k, val) in pairs {
        labels::validate(&k, &val, field, ErrorCode::InvalidNetworkConfig)?;
        if let Some(previous) = out.insert(k.clone(), val.clone()) {
            if previous != val {
                return Err(CniError::config(format!(
                    "\"{field}\" gives label {k:?} twice, as {previous:?} and {val:?}; give it once"
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(text: &str) -> Result<NetConf, CniError> {
        parse(text.as_bytes(), Strictness::Full)
    }

    const MINIMAL: &str = r#"{"cniVersion":"1.0.0","name":"membrane","type":"membrane-cni"}"#;

    #[test]
    fn minimal_config_gets_the_defaults() {
        let c = full(MINIMAL).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.queue_dir, PathBuf::from(DEFAULT_QUEUE_DIR));
        assert!(c.labels.is_empty() && c.prev_result.is_none());
    }

    #[test]
    fn all_our_fields_are_read() {
        let c = full(
            r#"{"cniVersion":"0.4.0","name":"n1","type":"membrane-cni",
                "socket":"/tmp/p.sock","queueDir":"/tmp/q",
                "labels":{"env":"prod"},
                "args":{"cni":{"labels":[{"key":"app","value":"web"}]}},
                "runtimeConfig":{"labels":{"tier":"fe"},"portMappings":[]},
                "dns":{"nameservers":["10.0.0.10"]},
                "capabilities":{"labels":true},
                "prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/32"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/p.sock"));
        assert_eq!(c.queue_dir, PathBuf::from("/tmp/q"));
        assert_eq!(c.labels["env"], "prod");
        assert_eq!(c.args_labels["app"], "web");
        assert_eq!(c.runtime_labels["tier"], "fe");
        assert_eq!(c.dns.nameservers, vec!["10.0.0.10"]);
        assert_eq!(c.prev_result.unwrap().ips[0].address, "10.0.0.2/32");
    }

    #[test]
    fn missing_config_is_code_7_and_malformed_json_code_6() {
        for input in ["", "  \n"] {
            let e = full(input).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidNetworkConfig);
            assert!(e.msg.contains("no network configuration"), "{}", e.msg);
        }
        let e = full(r#"{"cniVersion":"1.0.0","#).unwrap_err();
        assert_eq!(e.code, ErrorCode::DecodingFailure);
        assert!(e.msg.contains("not valid JSON"), "{}", e.msg);
        assert_eq!(
            full("[1]").unwrap_err().code,
            ErrorCode::InvalidNetworkConfig
        );
    }

    #[test]
    fn unsupported_version_is_code_1() {
        let e = full(r#"{"cniVersion":"0.2.0","name":"m","type":"t"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        // Even DEL refuses a version it cannot speak.
        let e = parse(
            br#"{"cniVersion":"9.9.9","name":"m","type":"t"}"#,
            Strictness::DeleteOnly,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
    }

    #[test]
    fn invalid_fields_are_code_7_naming_the_field() {
        let cases = [
            (r#"{"name":"m","type":"t"}"#, "no \"cniVersion\""),
            (
                r#"{"cniVersion":1,"name":"m","type":"t"}"#,
                "\"cniVersion\" must be a string",
            ),
            (r#"{"cniVersion":"1.0.0","type":"t"}"#, "no \"name\""),
            (
                r#"{"cniVersion":"1.0.0","name":"-x","type":"t"}"#,
                "network name",
            ),
            (r#"{"cniVersion":"1.0.0","name":"m"}"#, "no \"type\""),
            (
                r#"{"cniVersion":"1.0.0","name":"m","type":"t","socket":"rel"}"#,
                "\"socket\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","type":"t","queueDir":3}"#,
                "\"queueDir\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","type":"t","labels":[1]}"#,
                "\"labels\" must",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","type":"t","labels":{"a":1}}"#,
                "\"labels\" must",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","type":"t","labels":{"a":"b c"}}"#,
                "invalid label",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","type":"t","args":[]}"#,
                "\"args\" must",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","type":"t","args":{"cni":{"labels":[{"key":"a"}]}}}"#,
                "args.cni.labels",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","type":"t","runtimeConfig":{"labels":"a=b"}}"#,
                "runtimeConfig.labels",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","type":"t","prevResult":{"ips":"x"}}"#,
                "prevResult",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"m","type":"t","dns":{"nameservers":"x"}}"#,
                "\"dns\"",
            ),
        ];
        for (input, want) in cases {
            let e = full(input).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidNetworkConfig, "{input}");
            assert!(e.msg.contains(want), "{input}: {}", e.msg);
        }
    }

    #[test]
    fn fields_we_cannot_honour_are_code_2_with_key_and_value() {
        let cases = [
            (
                r#""ipam":{"type":"host-local"}"#,
                "ipam = {\"type\":\"host-local\"}",
            ),
            (
                r#""args":{"cni":{"ips":["10.0.0.9"]}}"#,
                "args.cni.ips = [\"10.0.0.9\"]",
            ),
            (
                r#""runtimeConfig":{"ips":["10.0.0.9/24"]}"#,
                "runtimeConfig.ips",
            ),
            (
                r#""runtimeConfig":{"mac":"aa:bb:cc:dd:ee:ff"}"#,
                "runtimeConfig.mac",
            ),
        ];
        for (field, want) in cases {
            let input = format!(r#"{{"cniVersion":"1.0.0","name":"m","type":"t",{field}}}"#);
            let e = full(&input).unwrap_err();
            assert_eq!(e.code, ErrorCode::UnsupportedField, "{input}");
            assert!(e.msg.contains(want), "{input}: {}", e.msg);
        }
    }

    #[test]
    fn delete_ignores_fields_it_does_not_use() {
        let c = parse(
            br#"{"cniVersion":"1.0.0","name":"m","type":"t","labels":{"a":"b c"},"ipam":{}}"#,
            Strictness::DeleteOnly,
        )
        .unwrap();
        assert_eq!(c.name, "m");
    }

    #[test]
    fn errors_are_written_in_the_configs_version_when_possible() {
        assert_eq!(error_version(br#"{"cniVersion":"0.3.1"}"#), "0.3.1");
        assert_eq!(error_version(br#"{"cniVersion":"7.0.0"}"#), "1.0.0");
        assert_eq!(error_version(b"garbage"), "1.0.0");
    }
}
