//! Label sets: the key under which a security identity is allocated.
//!
//! A label set is normalised before it becomes a key (sorted by key, one value per key) so
//! that `app=web,tier=fe` and `tier=fe,app=web` name the same identity on every node.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::RegistryError;

/// Longest key or value accepted, as in Kubernetes label values.
const MAX_PART_LEN: usize = 253;
/// Most labels in one set: far more than any workload carries, few enough that a label set
/// stays a small key (at most about 32 KiB).
pub const MAX_LABELS_PER_SET: usize = 64;

/// A normalised set of `key=value` labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LabelSet(BTreeMap<String, String>);

impl LabelSet {
    /// Parses `key=value` strings. Keys may carry a source prefix (`k8s:app`); a key given
    /// twice with different values is an error, the same pair twice is not.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, RegistryError> {
        let mut map = BTreeMap::new();
        for item in items {
            let item = item.as_ref().trim();
            let Some((key, value)) = item.split_once('=') else {
                return Err(RegistryError::InvalidLabels(format!(
                    "label {item:?} is not in the form key=value"
                )));
            };
            validate_part("key", key, true)?;
            validate_part("value", value, false)?;
            if let Some(previous) = map.insert(key.to_string(), value.to_string()) {
                if previous != value {
                    return Err(RegistryError::InvalidLabels(format!(
                        "label key {key:?} is given twice, with values {previous:?} and {value:?}"
                    )));
                }
            }
        }
        if map.is_empty() {
            return Err(RegistryError::InvalidLabels(
                "an identity needs at least one label (key=value)".into(),
            ));
        }
        let set = LabelSet(map);
        set.check_size()?;
        Ok(set)
    }

    /// Refuses a set of more than [`MAX_LABELS_PER_SET`] labels. `parse` checks it; a set
    /// decoded from a command did not go through `parse`, so commands check it again.
    pub fn check_size(&self) -> Result<(), RegistryError> {
        if self.0.len() > MAX_LABELS_PER_SET {
            return Err(RegistryError::InvalidLabels(format!(
                "{} labels given, at most {MAX_LABELS_PER_SET} are allowed in one set; drop labels that no policy selects on",
                self.0.len()
            )));
        }
        Ok(())
    }

    /// The labels as `key=value` strings, sorted by key.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Iterates over `(key, value)` pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no labels (never the case for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_strings().join(","))
    }
}

fn validate_part(what: &str, s: &str, is_key: bool) -> Result<(), RegistryError> {
    if is_key && s.is_empty() {
        return Err(RegistryError::InvalidLabels("a label key is empty".into()));
    }
    if s.len() > MAX_PART_LEN {
        return Err(RegistryError::InvalidLabels(format!(
            "label {what} {s:?} is longer than {MAX_PART_LEN} characters"
        )));
    }
    let allowed = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/') || (is_key && c == ':')
    };
    if let Some(bad) = s.chars().find(|c| !allowed(*c)) {
        return Err(RegistryError::InvalidLabels(format!(
            "label {what} {s:?} contains {bad:?}; use letters, digits, '-', '_', '.', '/'{}",
            if is_key {
                " and ':' for a source prefix"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_duplicates_do_not_change_the_set() {
        let a = LabelSet::parse(&["tier=fe", "app=web"]).unwrap();
        let b = LabelSet::parse(&["app=web", "tier=fe", "app=web"]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_strings(), vec!["app=web", "tier=fe"]);
        assert_eq!(a.to_string(), "app=web,tier=fe");
    }

    #[test]
    fn malformed_labels_are_refused_with_the_reason() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "at least one label"),
            (&["app"], "not in the form key=value"),
            (&["=web"], "key is empty"),
            (&["app=web", "app=db"], "given twice"),
            (&["app=we b"], "contains ' '"),
            (&["a pp=web"], "contains ' '"),
            (&["app=a:b"], "contains ':'"),
        ];
        for (input, expected) in cases {
            let err = LabelSet::parse(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }

    #[test]
    fn t41_a_set_of_more_than_the_cap_is_refused() {
        let many: Vec<String> = (0..=MAX_LABELS_PER_SET)
            .map(|i| format!("k{i}=v"))
            .collect();
        let err = LabelSet::parse(&many).unwrap_err().to_string();
        assert!(err.contains("at most 64"), "{err}");
        assert!(LabelSet::parse(&many[..MAX_LABELS_PER_SET]).is_ok());
    }

    #[test]
    fn source_prefix_and_empty_value_are_allowed() {
        let s = LabelSet::parse(&["k8s:io.kubernetes.pod.namespace=default", "canary="]).unwrap();
        assert_eq!(s.len(), 2);
    }
}
