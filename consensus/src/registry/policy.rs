//! Network policies as the registry keeps them: named documents with a revision.
//!
//! The registry stores each policy's YAML source as it was imported, already validated by
//! the node that proposed it (the parser lives with the policy engine in the agent; the
//! state machine stays free of it). Every change bumps one cluster-wide revision, which
//! nodes report once they enforce it (`membrane policy wait REV`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Registry, RegistryError, Response};

/// Largest policy source accepted, in bytes (a policy with 10,000 rules fits).
pub const MAX_POLICY_BYTES: usize = 4 << 20;
/// Most policies a cluster may hold.
pub const MAX_POLICIES: usize = 100_000;

/// One stored policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub name: String,
    /// The policy's YAML document.
    pub source: String,
    /// The revision at which it was last written.
    pub revision: u64,
    pub updated_at: i64,
}

/// A policy to store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPolicy {
    pub name: String,
    pub source: String,
}

/// The policy repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyTable {
    by_name: BTreeMap<String, PolicyRecord>,
    /// Bumped by every change; 0 before the first.
    revision: u64,
}

impl PolicyTable {
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn iter(&self) -> impl Iterator<Item = &PolicyRecord> {
        self.by_name.values()
    }

    pub fn get(&self, name: &str) -> Option<&PolicyRecord> {
        self.by_name.get(name)
    }

    /// Checks a batch before any of it is stored.
    pub fn check(&self, policies: &[NewPolicy]) -> Result<(), String> {
        if policies.is_empty() {
            return Err("nothing to import: the file holds no policy".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in policies {
            validate_name(&p.name)?;
            if !seen.insert(p.name.as_str()) {
                return Err(format!("policy {:?} is given twice", p.name));
            }
            if p.source.trim().is_empty() {
                return Err(format!("policy {:?} has an empty source", p.name));
            }
            if p.source.len() > MAX_POLICY_BYTES {
                return Err(format!(
                    "policy {:?} is {} bytes; at most {MAX_POLICY_BYTES} are accepted, split it",
                    p.name,
                    p.source.len()
                ));
            }
        }
        let new_names = policies
            .iter()
            .filter(|p| !self.by_name.contains_key(&p.name))
            .count();
        if self.by_name.len() + new_names > MAX_POLICIES {
            return Err(format!(
                "the cluster would hold more than {MAX_POLICIES} policies; delete some first"
            ));
        }
        Ok(())
    }

    /// Stores a checked batch under one new revision.
    pub fn put(&mut self, policies: Vec<NewPolicy>, now: i64) -> u64 {
        self.revision += 1;
        for p in policies {
            self.by_name.insert(
                p.name.clone(),
                PolicyRecord {
                    name: p.name,
                    source: p.source,
                    revision: self.revision,
                    updated_at: now,
                },
            );
        }
        self.revision
    }

    /// Removes a policy under a new revision; `None` if there is no such policy.
    pub fn delete(&mut self, name: &str) -> Option<u64> {
        self.by_name.remove(name)?;
        self.revision += 1;
        Some(self.revision)
    }
}

/// Policy names are DNS labels, as Kubernetes object names: 1-253 characters of lower-case
/// letters, digits, '-' and '.', starting and ending with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "policy name {name:?} must be 1 to 253 characters long"
        ));
    }
    if !name.chars().all(ok_char) || !ok_end(name.chars().next()) || !ok_end(name.chars().last()) {
        return Err(format!(
            "policy name {name:?} must be lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

impl Registry {
    /// Every stored policy, by name.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyRecord> {
        self.policies.iter()
    }

    pub fn policy(&self, name: &str) -> Option<&PolicyRecord> {
        self.policies.get(name)
    }

    /// The policy revision: bumped by every policy change, 0 before the first.
    pub fn policy_revision(&self) -> u64 {
        self.policies.revision()
    }

    pub(super) fn put_policies(
        &mut self,
        policies: Vec<NewPolicy>,
        now: i64,
    ) -> Result<Response, RegistryError> {
        self.config()?;
        self.policies
            .check(&policies)
            .map_err(RegistryError::InvalidPolicy)?;
        Ok(Response::PolicyRevision(self.policies.put(policies, now)))
    }

    pub(super) fn delete_policy(&mut self, name: &str) -> Result<Response, RegistryError> {
        self.config()?;
        let revision = self
            .policies
            .delete(name)
            .ok_or_else(|| RegistryError::PolicyNotFound {
                name: name.to_string(),
            })?;
        Ok(Response::PolicyRevision(revision))
    }
}

#[cfg(test)]
mod tests {
    use super::NewPolicy;
    use crate::registry::test_support::*;
    use crate::registry::{Command, RegistryError, Response};

    fn policy(name: &str) -> NewPolicy {
        NewPolicy {
            name: name.into(),
            source: format!("metadata:\n  name: {name}\n"),
        }
    }

    #[test]
    fn t90_policies_are_stored_under_a_rising_revision() {
        let mut r = bootstrapped();
        assert_eq!(r.policy_revision(), 0);
        let resp = r.apply(Command::PutPolicies {
            policies: vec![policy("a"), policy("b")],
            now: T0,
        });
        assert_eq!(resp, Response::PolicyRevision(1));
        assert_eq!(r.policies().count(), 2);
        // Replacing one keeps the other and bumps the revision once.
        let resp = r.apply(Command::PutPolicies {
            policies: vec![policy("a")],
            now: T0 + 1,
        });
        assert_eq!(resp, Response::PolicyRevision(2));
        assert_eq!(r.policy("a").unwrap().revision, 2);
        assert_eq!(r.policy("b").unwrap().revision, 1);
        let resp = r.apply(Command::DeletePolicy { name: "b".into() });
        assert_eq!(resp, Response::PolicyRevision(3));
        assert!(r.policy("b").is_none());
    }

    #[test]
    fn t91_bad_policy_writes_are_refused_and_change_nothing() {
        let mut r = bootstrapped();
        r.apply(Command::PutPolicies {
            policies: vec![policy("a")],
            now: T0,
        });
        for bad in [
            vec![],
            vec![policy("Upper")],
            vec![policy("-dash")],
            vec![policy("ok"), policy("ok")],
            vec![NewPolicy {
                name: "empty".into(),
                source: "  ".into(),
            }],
        ] {
            refused(
                &mut r,
                Command::PutPolicies {
                    policies: bad,
                    now: T0,
                },
                |e| matches!(e, RegistryError::InvalidPolicy(_)),
            );
        }
        refused(
            &mut r,
            Command::DeletePolicy {
                name: "nope".into(),
            },
            |e| matches!(e, RegistryError::PolicyNotFound { .. }),
        );
        assert_eq!(r.policy_revision(), 1);
    }
}
