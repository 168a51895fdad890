//! The old home of the agent's policy sync, kept so that `crate::policy::sync::X` paths
//! still resolve: the pure part now lives in [`super::desired`], the IO in [`super::apply`].

pub use super::apply::{stored_policies, PolicySync, RuleNames};
pub use super::desired::{
    desired_policy_map, endpoint_entries, identities_of, rule_id, DesiredPolicy,
};
