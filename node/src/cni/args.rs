//! CNI_ARGS: `KEY=VALUE` pairs separated by `;`, per the CNI conventions. Unknown keys are an
//! error unless `IgnoreUnknown` is true, so a typo (`lable_app=web`) is not silently dropped.

use super::error::{CniError, ErrorCode};
use super::labels::{self, Labels};

/// Prefix of a label pair: `label_app=web` is the label `app=web`.
pub const LABEL_PREFIX: &str = "label_";

/// Keys Kubernetes runtimes pass that we accept and ignore: the pod name and uid would give
/// every pod its own identity, and the infra container id is CNI_CONTAINERID already.
const IGNORED_KEYS: [&str; 3] = ["K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"];

/// What CNI_ARGS contributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub labels: Labels,
}

/// Parses CNI_ARGS. Errors are code 4 (an invalid environment variable).
pub fn parse(raw: &str) -> Result<CniArgs, CniError> {
    let mut pairs = Vec::new();
    // Tolerate empty segments ("A=1;;B=2;"), which some runtimes produce when joining.
    for segment in raw.split(';').filter(|s| !s.trim().is_empty()) {
        let Some((key, value)) = segment.split_once('=') else {
            return Err(CniError::env(format!(
                "CNI_ARGS has {segment:?}, which is not KEY=VALUE; pass pairs like \
                 \"K8S_POD_NAMESPACE=default;label_app=web\""
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(CniError::env(format!(
                "CNI_ARGS has {segment:?}, with an empty key; pass pairs like label_app=web"
            )));
        }
        pairs.push((key, value));
    }

    let mut ignore_unknown = false;
    for (key, value) in &pairs {
        if *key == "IgnoreUnknown" {
            ignore_unknown = parse_bool(value).ok_or_else(|| {
                CniError::env(format!(
                    "CNI_ARGS IgnoreUnknown={value:?} is not a boolean; use 1, true, 0 or false"
                ))
            })?;
        }
    }

    let mut out = CniArgs::default();
    let mut unknown = Vec::new();
    for (key, value) in pairs {
        let label_key = if key == "K8S_POD_NAMESPACE" {
            "namespace"
        } else if let Some(k) = key.strip_prefix(LABEL_PREFIX) {
            k
        } else {
            if key != "IgnoreUnknown" && !IGNORED_KEYS.contains(&key) {
                unknown.push(key);
            }
            continue;
        };
        labels::validate(label_key, value, "CNI_ARGS", ErrorCode::InvalidEnvironment)?;
        if let Some(previous) = out.labels.insert(label_key.to_string(), value.to_string()) {
            if previous != value {
                return Err(CniError::env(format!(
                    "CNI_ARGS gives label {label_key:?} twice, as {previous:?} and {value:?}; \
                     pass it once"
                )));
            }
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(CniError::env(format!(
            "CNI_ARGS has unknown keys {}; membrane-cni understands K8S_POD_NAMESPACE, \
             K8S_POD_NAME, K8S_POD_UID, K8S_POD_INFRA_CONTAINER_ID and label_KEY=VALUE; add \
             IgnoreUnknown=1 to ignore the others",
            unknown.join(", ")
        )));
    }
    Ok(out)
}

/// Booleans as Go's strconv.ParseBool reads them, since CNI_ARGS is a Go-world convention.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_args_give_the_namespace_label() {
        let a = parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1",
        )
        .unwrap();
        assert_eq!(a.labels.len(), 1);
        assert_eq!(a.labels["namespace"], "default");
    }

    #[test]
    fn label_pairs_become_labels() {
        let a = parse("label_app=web;label_k8s:tier=fe;;").unwrap();
        assert_eq!(a.labels["app"], "web");
        assert_eq!(a.labels["k8s:tier"], "fe");
        assert_eq!(parse("").unwrap(), CniArgs::default());
    }

    #[test]
    fn bad_cni_args_are_code_4() {
        let cases = [
            ("novalue", "not KEY=VALUE"),
            ("=x", "empty key"),
            ("FOO=bar", "unknown keys FOO"),
            ("IgnoreUnknown=0;FOO=bar", "unknown keys FOO"),
            ("IgnoreUnknown=maybe", "not a boolean"),
            ("label_app=a b", "invalid label"),
            ("label_app=a;label_app=b", "twice"),
            ("K8S_POD_NAMESPACE=a;label_namespace=b", "twice"),
        ];
        for (input, want) in cases {
            let e = parse(input).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnvironment, "{input}");
            assert!(e.msg.contains(want), "{input}: {}", e.msg);
        }
    }

    #[test]
    fn ignore_unknown_skips_unknown_keys_wherever_it_is() {
        for input in ["FOO=bar;IgnoreUnknown=true", "IgnoreUnknown=1;FOO=bar"] {
            assert_eq!(parse(input).unwrap(), CniArgs::default(), "{input}");
        }
    }
}
