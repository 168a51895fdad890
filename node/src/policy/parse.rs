//! Reading and writing policy files: several YAML documents separated by `---`.
//!
//! The YAML crate is `yaml_serde`, the serde_yaml code base maintained by the YAML
//! organisation since serde_yaml 0.9 was archived: it keeps serde_yaml's API, reports the
//! line and column of every error (`Error::location`) and refuses duplicate keys. It was
//! preferred to `serde_yml` (an unsound and unmaintained fork) and to `serde_norway` (one
//! maintainer). `serde_path_to_error` supplies the field path as a value, so that the path
//! is part of [`Diagnostic`] rather than buried in a message.

use std::collections::BTreeMap;

use serde::Deserialize;

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
        let occurrence = policies
            .iter()
            .filter(|p| p.metadata.name == name)
            .count();
        let line = name_line(text, &name, occurrence);
        if let Some(first) = first_line_of.get(&name) {
            let at = first.map(|l| format!(" (first at line {l})")).unwrap_or_default();
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
        let doc = yaml_serde::to_string(policy).map_err(|e| PolicyError::Serialize(e.to_string()))?;
        out.push_str(&doc);
    }
    Ok(out)
}

/// Turns a YAML error into `file:line:column: path: message`.
fn diagnostic(
    file_label: &str,
    err: &serde_path_to_error::Error<yaml_serde::Error>,
) -> Diagnostic {
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
pub(crate) fn parse_part<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, String> {
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

    const HEAD: &str = "apiVersion: membrane.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\nspec:\n";

    #[test]
    fn scratch() {
        let text = format!(
            "{HEAD}  endpointSelector:\n    matchLabels:\n      app: web\n  ingress:\n  - fromEndpoints:\n    - matchLabel:\n        app: x\n"
        );
        println!("{}", err(&text));
        let text = format!(
            "{HEAD}  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports:\n      - port: 80\n        endPort: 70\n"
        );
        println!("{}", err(&text));
        panic!();
    }
}
