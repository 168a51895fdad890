//! What the agent lets an operator see: the flow monitor (events from the datapath's ring
//! buffer, decorated with endpoints, identities and rule names) and the Prometheus metrics.

pub mod api;
pub mod metrics;
pub mod monitor;

use std::sync::Arc;

/// What the monitor and metrics share with the policy sync: the policy sync fills
/// `rule_names` (rule id -> name, for events) and stores the revision it has written to
/// the datapath in `enforced_revision` (for metrics and `policy wait`).
#[derive(Clone)]
pub struct Telemetry {
    pub monitor: monitor::Monitor,
    pub rule_names: crate::policy::apply::RuleNames,
    pub enforced_revision: Arc<std::sync::atomic::AtomicU64>,
}
