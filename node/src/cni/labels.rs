//! Endpoint labels: validation of each source and the merge order.
//!
//! Sources, lowest precedence first (a later source overrides a key of an earlier one):
//!
//! 1. the network config's `"labels"` (defaults for every pod of the network),
//! 2. CNI_ARGS `label_KEY=VALUE` and `K8S_POD_NAMESPACE` (as `namespace`),
//! 3. the config's `"args": {"cni": {"labels": ...}}` (the CNI args convention),
//! 4. `"runtimeConfig": {"labels": ...}` (the runtime's, per invocation, most specific).
//!
//! Invocation-specific sources win over the static config so that a network-wide default
//! (say `env=prod`) never hides the namespace the runtime says the pod is in.

use std::collections::BTreeMap;

use membrane_consensus::registry::LabelSet;

use super::error::{CniError, ErrorCode};

/// Labels by key, in key order (the order the registry normalises to anyway).
pub type Labels = BTreeMap<String, String>;

/// Checks one label with the registry's rules, so a label the registry would refuse is
/// refused here, before the agent is called. `source` names where it came from.
pub fn validate(key: &str, value: &str, source: &str, code: ErrorCode) -> Result<(), CniError> {
    LabelSet::parse(&[format!("{key}={value}")])
        .map(|_| ())
        .map_err(|e| {
            CniError::new(
                code,
                format!(
                    "invalid label {key:?}={value:?} in {source}: {e}; fix the label in {source}"
                ),
            )
        })
}

/// Merges the sources in precedence order (see the module docs): later layers override.
pub fn merge(conf: &Labels, cni_args: &Labels, args_cni: &Labels, runtime: &Labels) -> Labels {
    let mut out = Labels::new();
    for layer in [conf, cni_args, args_cni, runtime] {
        for (k, v) in layer {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// An endpoint's identity is allocated from its labels, so an ADD needs at least one.
pub fn require_some(labels: &Labels) -> Result<(), CniError> {
    if labels.is_empty() {
        return Err(CniError::config(
            "the endpoint has no labels, and its security identity is allocated from them; add \
             \"labels\": {\"app\": \"NAME\"} to the network config, pass CNI_ARGS \
             label_app=NAME (or K8S_POD_NAMESPACE), or runtimeConfig.labels",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn later_sources_override_earlier_ones() {
        let conf = l(&[("env", "prod"), ("namespace", "conf"), ("a", "1")]);
        let cni_args = l(&[("namespace", "kube"), ("b", "2")]);
        let args_cni = l(&[("b", "args"), ("c", "3")]);
        let runtime = l(&[("c", "rt")]);
        let got = merge(&conf, &cni_args, &args_cni, &runtime);
        assert_eq!(
            got,
            l(&[
                ("a", "1"),
                ("b", "args"),
                ("c", "rt"),
                ("env", "prod"),
                ("namespace", "kube")
            ])
        );
    }

    #[test]
    fn bad_labels_name_their_source() {
        let e = validate("app", "a b", "CNI_ARGS", ErrorCode::InvalidEnvironment).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(
            e.msg.contains("CNI_ARGS") && e.msg.contains("' '"),
            "{}",
            e.msg
        );
        let e = validate("", "x", "labels", ErrorCode::InvalidNetworkConfig).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidNetworkConfig);
        assert!(validate("k8s:app", "", "labels", ErrorCode::InvalidNetworkConfig).is_ok());
    }

    #[test]
    fn no_labels_is_refused() {
        assert_eq!(
            require_some(&Labels::new()).unwrap_err().code,
            ErrorCode::InvalidNetworkConfig
        );
        assert!(require_some(&l(&[("a", "b")])).is_ok());
    }
}
