//! Label selectors matched against the registry's label sets.
//!
//! Label keys in the registry may carry a source prefix (`k8s:app=web`). A selector key
//! without a prefix (`app`) matches the key with any source (`app`, `k8s:app`, ...), as
//! Cilium's `any:` source does; `any:app` means the same; a key with another prefix
//! (`k8s:app`) matches only that key. When several keys match, a requirement holds if any
//! of their values satisfies it (`In`, `matchLabels`), or none does (`NotIn`).

use membrane_consensus::registry::LabelSet;

use super::rule::{EndpointSelector, Operator};

/// The values under every key of `labels` that the selector key `key` names.
fn values<'a>(labels: &'a LabelSet, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let bare = key.strip_prefix("any:").unwrap_or(key);
    let sourceless = !bare.contains(':');
    labels.iter().filter_map(move |(k, v)| {
        let hit = if sourceless {
            k == bare || k.split_once(':').is_some_and(|(_, rest)| rest == bare)
        } else {
            k == bare
        };
        hit.then_some(v)
    })
}

impl EndpointSelector {
    /// True when every `matchLabels` pair and every expression holds for `labels`.
    /// The empty selector matches every label set.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| values(labels, k).any(|x| x == v))
            && self.match_expressions.iter().all(|e| {
                let mut vals = values(labels, &e.key).peekable();
                match e.operator {
                    Operator::In => vals.any(|x| e.values.iter().any(|w| w == x)),
                    Operator::NotIn => !vals.any(|x| e.values.iter().any(|w| w == x)),
                    Operator::Exists => vals.peek().is_some(),
                    Operator::DoesNotExist => vals.peek().is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse::parse_part;

    fn labels(items: &[&str]) -> LabelSet {
        LabelSet::parse(items).expect("test labels are valid")
    }

    fn sel(yaml: &str) -> EndpointSelector {
        parse_part(yaml).expect("test selector is valid")
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(sel("{}").matches(&labels(&["app=web"])));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = sel("matchLabels: {app: web, tier: fe}");
        assert!(s.matches(&labels(&["app=web", "tier=fe", "x=y"])));
        assert!(!s.matches(&labels(&["app=web"])));
        assert!(!s.matches(&labels(&["app=web", "tier=be"])));
    }

    #[test]
    fn source_prefixes() {
        let k8s = labels(&["k8s:app=web"]);
        assert!(sel("matchLabels: {app: web}").matches(&k8s));
        assert!(sel("matchLabels: {any:app: web}").matches(&k8s));
        assert!(sel("matchLabels: {k8s:app: web}").matches(&k8s));
        assert!(!sel("matchLabels: {docker:app: web}").matches(&k8s));
        assert!(!sel("matchLabels: {k8s:app: web}").matches(&labels(&["app=web"])));
    }

    #[test]
    fn expressions() {
        let web = labels(&["app=web", "env=prod"]);
        let cases = [
            ("{key: app, operator: In, values: [web, db]}", true),
            ("{key: app, operator: In, values: [db]}", false),
            ("{key: app, operator: NotIn, values: [db]}", true),
            ("{key: app, operator: NotIn, values: [web]}", false),
            ("{key: team, operator: NotIn, values: [a]}", true),
            ("{key: team, operator: In, values: [a]}", false),
            ("{key: env, operator: Exists}", true),
            ("{key: team, operator: Exists}", false),
            ("{key: team, operator: DoesNotExist}", true),
            ("{key: env, operator: DoesNotExist}", false),
        ];
        for (expr, expected) in cases {
            let s = sel(&format!("matchExpressions: [{expr}]"));
            assert_eq!(s.matches(&web), expected, "{expr}");
        }
    }

    #[test]
    fn bad_expressions_are_refused_with_the_reason() {
        let cases = [
            ("{key: app, operator: In}", "needs at least one value"),
            (
                "{key: app, operator: Exists, values: [a]}",
                "takes no \"values\"",
            ),
            (
                "{key: app, operator: Has, values: [a]}",
                "unknown variant \"Has\"",
            ),
            ("{key: '', operator: Exists}", "label key is empty"),
            ("{key: app, operator: In, values: ['a b']}", "contains ' '"),
            (
                "{key: app, operator: In, value: [a]}",
                "unknown field \"value\"",
            ),
        ];
        for (expr, expected) in cases {
            let err = parse_part::<EndpointSelector>(&format!("matchExpressions: [{expr}]"))
                .expect_err(expr);
            assert!(err.contains(expected), "{expr}: {err}");
        }
        let err = parse_part::<EndpointSelector>("matchLabels: {'a b': x}").expect_err("bad key");
        assert!(err.contains("contains ' '"), "{err}");
    }
}
