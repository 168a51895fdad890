//! Reading and writing policy files: several YAML documents separated by `---`.
//!
//! The YAML crate is `yaml_serde`, the serde_yaml code base maintained by the YAML
//! organisation since serde_yaml 0.9 was archived: it keeps serde_yaml's API, reports the
//! line and column of every error (`Error::location`) and refuses duplicate keys. It was
//! preferred to `serde_yml` (an unsound and unmaintained fork) and to `serde_norway` (one
//! maintainer). `serde_path_to_error` supplies the field path as a value, so that the path
//! is part of [`Diagnostic`] rather than buried in a message.

use std::collections::BTreeMap;

use super::error::{Diagnostic, PolicyError};
use super::rule::Policy;

/// Parses every policy document of a file. `file_label` names the file in errors.
///
/// Empty documents are skipped. The first error ends the parse: a file is taken whole or
/// not at all. Names must be unique within the file.
pub fn parse_policies(file_label: &str, text: &str) -> Result<Vec<Policy>, PolicyError> {
    let mut policies: Vec<Policy> = Vec::new();
    let mut first_line_of: BTreeMap<String, Option<usize>> = BTreeMap::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        // After an error the document iterator repeats it forever: stop at the first.
        let policy = match serde_path_to_error::deserialize::<_, Option<Policy>>(document) {
            Ok(Some(policy)) => policy,
            Ok(None) => continue,
            Err(err) => return Err(PolicyError::Invalid(diagnostic(file_label, &err))),
        };
        let name = policy.metadata.name.clone();
        let occurrence = policies.iter().filter(|p| p.metadata.name == name).count();
        let line = name_line(text, &name, occurrence);
        if let Some(first) = first_line_of.get(&name) {
            let at = first
                .map(|l| format!(" (first at line {l})"))
                .unwrap_or_default();
            return Err(PolicyError::Invalid(Diagnostic {
                file: file_label.to_string(),
                line,
                column: None,
                path: "metadata.name".into(),
                message: format!("policy name {name:?} is used twice in this file{at}"),
            }));
        }
        first_line_of.insert(name, line);
        policies.push(policy);
    }
    Ok(policies)
}

/// Writes policies back as YAML documents separated by `---`, in the given order, with
/// sorted maps and without absent fields, so that the same policies give the same text.
pub fn to_yaml(policies: &[Policy]) -> Result<String, PolicyError> {
    let mut out = String::new();
    for (i, policy) in policies.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let doc =
            yaml_serde::to_string(policy).map_err(|e| PolicyError::Serialize(e.to_string()))?;
        out.push_str(&doc);
    }
    Ok(out)
}

/// Turns a YAML error into `file:line:column: path: message`.
fn diagnostic(file_label: &str, err: &serde_path_to_error::Error<yaml_serde::Error>) -> Diagnostic {
    let inner = err.inner();
    let location = inner.location();
    let mut message = inner.to_string();
    // yaml_serde's message is "<path>: <what> at line L column C"; the path and location
    // are reported as fields, so cut them from the words.
    if let Some(loc) = &location {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(m) = message.strip_suffix(&suffix) {
            message = m.to_string();
        }
    }
    let path = err.path().to_string();
    let path = if path == "." { String::new() } else { path };
    // yaml_serde's own path may stop at the parent of an unknown field: cut any prefix of
    // ours.
    if let Some((head, rest)) = message.split_once(": ") {
        if !head.is_empty() && (path.starts_with(head) || head == ".") {
            message = rest.to_string();
        }
    }
    Diagnostic {
        file: file_label.to_string(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        path,
        message: message.replace('`', "\""),
    }
}

/// The 1-based line of the `occurrence`-th (0-based) `name: NAME` line, if one is found.
/// Used only to point at a duplicate name, which serde cannot locate.
fn name_line(text: &str, name: &str, occurrence: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let Some(rest) = line.trim_start().strip_prefix("name:") else {
                return false;
            };
            let value = rest.split(" #").next().unwrap_or("").trim();
            let value = value.trim_matches(|c| c == '"' || c == '\'');
            value == name
        })
        .nth(occurrence)
        .map(|(i, _)| i + 1)
}

/// Deserialises one value from YAML, for tests of the parts of a document.
#[cfg(test)]
pub(crate) fn parse_part<T: for<'de> serde::Deserialize<'de>>(text: &str) -> Result<T, String> {
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| diagnostic("part", &e).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse_policies("policies.yaml", text) {
            Ok(p) => panic!("parsed: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    const HEAD: &str =
        "apiVersion: membrane.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\nspec:\n";

    fn doc(name: &str, spec: &str) -> String {
        format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n{spec}")
    }

    #[test]
    fn a_full_document_parses_and_round_trips() {
        let text = r#"
apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata:
  name: web
spec:
  endpointSelector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: env, operator: In, values: [prod]}
  ingress:
  - fromEndpoints: [{matchLabels: {app: lb}}]
    fromCIDR: [10.0.0.0/8]
    fromCIDRSet: [{cidr: 0.0.0.0/0, except: [192.168.0.0/16]}]
    fromEntities: [host, remote-node]
    toPorts:
    - ports:
      - {port: "80", protocol: TCP}
      - {port: 8000, endPort: 8080}
      - {protocol: ICMP}
  ingressDeny:
  - fromEntities: [world]
  egress:
  - toEntities: [cluster]
  egressDeny:
  - toCIDR: [10.1.0.0/16]
---
"#;
        let policies = parse_policies("policies.yaml", text).expect("valid");
        assert_eq!(policies.len(), 1);
        let out = to_yaml(&policies).expect("serialisable");
        assert!(
            out.contains("port: '80'") || out.contains("port: \"80\""),
            "{out}"
        );
        let again = parse_policies("again.yaml", &out).expect("round trip parses");
        assert_eq!(again, policies);
        assert_eq!(
            to_yaml(&again).expect("serialisable"),
            out,
            "serialising is stable"
        );
    }

    #[test]
    fn several_documents_and_empty_ones() {
        let text = format!(
            "{}---\n---\n{}",
            doc("a", "  endpointSelector: {}\n"),
            doc("b", "  endpointSelector: {}\n")
        );
        let names: Vec<String> = parse_policies("f", &text)
            .expect("valid")
            .into_iter()
            .map(|p| p.metadata.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(parse_policies("f", "").expect("empty file"), vec![]);
    }

    #[test]
    fn an_unknown_field_names_file_line_column_and_path() {
        let text = format!(
            "{HEAD}  endpointSelector:\n    matchLabels:\n      app: web\n  ingress:\n  - fromEndpoints:\n    - matchLabel:\n        app: x\n"
        );
        assert_eq!(
            err(&text),
            "policies.yaml:11:7: spec.ingress[0].fromEndpoints[0].matchLabel: unknown field \
             \"matchLabel\", expected \"matchLabels\" or \"matchExpressions\""
        );
    }

    #[test]
    fn every_bad_input_has_its_message() {
        let sel = "  endpointSelector: {}\n";
        let ports = |p: &str| format!("{sel}  ingress:\n  - toPorts:\n    - ports:\n      - {p}\n");
        let cases: Vec<(String, &str)> = vec![
            ("a: [".into(), "policies.yaml:1:"),
            ("apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {endpointSelector: {}}\n".into(),
             "policies.yaml:1:13: apiVersion: unknown variant \"v1\", expected \"membrane.io/v1\" or \"cilium.io/v2\""),
            ("apiVersion: cilium.io/v2\nkind: Pod\nmetadata: {name: a}\nspec: {endpointSelector: {}}\n".into(),
             "policies.yaml:2:7: kind: unknown variant \"Pod\""),
            ("apiVersion: cilium.io/v2\nkind: NetworkPolicy\nspec: {endpointSelector: {}}\n".into(),
             "missing field \"metadata\""),
            (doc("a", "  ingress: []\n"), "spec: missing field \"endpointSelector\""),
            (doc("''", sel), "metadata.name: the policy name is empty"),
            (doc("Web", sel), "is not a DNS label"),
            (doc("a", &ports("{port: 0}")), "spec.ingress[0].toPorts[0].ports[0].port: port 0 is out of range 1-65535"),
            (doc("a", &ports("{port: 65536}")), "port 65536 is out of range"),
            (doc("a", &ports("{port: '-1'}")), "named ports are not supported"),
            (doc("a", &ports("{port: -1}")), "port -1 is out of range"),
            (doc("a", &ports("{port: http}")), "port \"http\" is not a number; named ports are not supported"),
            (doc("a", &ports("{port: 80, endPort: 70}")), "policies.yaml:10:9: spec.ingress[0].toPorts[0].ports[0]: endPort 70 is below port 80"),
            (doc("a", &ports("{endPort: 70}")), "endPort needs a port"),
            (doc("a", &ports("{port: 80, protocol: ICMP}")), "ICMP has no ports"),
            (doc("a", &ports("{port: 80, protocol: tcp}")), "unknown variant \"tcp\", expected one of \"TCP\", \"UDP\", \"ICMP\", \"ANY\""),
            (doc("a", &ports("{port: 80, proto: TCP}")), "unknown field \"proto\""),
            (doc("a", &format!("{sel}  ingress:\n  - fromCIDR: [10.0.0.1/8]\n")),
             "policies.yaml:8:16: spec.ingress[0].fromCIDR[0]: \"10.0.0.1/8\" has host bits set; write 10.0.0.0/8"),
            (doc("a", &format!("{sel}  egress:\n  - toCIDR: [nope]\n")), "spec.egress[0].toCIDR[0]: \"nope\" is not an IPv4 CIDR"),
            (doc("a", &format!("{sel}  egress:\n  - toCIDRSet: [{{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]\n")),
             "spec.egress[0].toCIDRSet[0]: except 11.0.0.0/16 does not lie inside cidr 10.0.0.0/8"),
            (doc("a", &format!("{sel}  egress:\n  - toCIDRSet: [{{cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]\n")),
             "does not lie inside"),
            (doc("a", &format!("{sel}  ingress:\n  - fromEntities: [internet]\n")),
             "spec.ingress[0].fromEntities[0]: unknown variant \"internet\", expected one of \"host\", \"world\", \"cluster\", \"all\", \"remote-node\""),
            (doc("a", &format!("{sel}  ingress:\n  - toEndpoints: [{{}}]\n")), "spec.ingress[0].toEndpoints: unknown field \"toEndpoints\""),
            (doc("a", &format!("{sel}  ingres:\n  - {{}}\n")), "spec.ingres: unknown field \"ingres\""),
            (format!("{}---\n{}", doc("a", sel), doc("a", sel)),
             "policies.yaml:11: metadata.name: policy name \"a\" is used twice in this file (first at line 4)"),
            (doc("a", "  endpointSelector: {matchLabels: {app: web}, matchLabels: {app: db}}\n"), "duplicate"),
        ];
        for (text, expected) in cases {
            let got = err(&text);
            assert!(
                got.contains(expected),
                "\n{text}\nexpected: {expected}\n     got: {got}"
            );
            assert!(got.starts_with("policies.yaml:"), "{got}");
        }
    }
}
