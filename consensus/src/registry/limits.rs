//! The contract "a log entry that cannot be applied is refused before it is proposed".
//!
//! Every decoder of a log entry (the sled log, AppendEntries, snapshots) is bounded
//! ([`crate::codec`]); a command over those bounds would be committed and then fail to decode
//! on every node, forever. [`Command::check_limits`] refuses such a command on the proposer,
//! before anything is written: whoever proposes (the leader's write path, a forwarded write)
//! calls it first.

#[cfg(doc)]
use super::MAX_LABELS_PER_SET;
use super::{Command, LabelSet, RegistryError};

/// Largest encoded command accepted as a log entry. Half the RPC limit, so that an
/// AppendEntries carrying it (with the entry's framing) always fits in one message.
pub const MAX_COMMAND_BYTES: u64 = crate::codec::MAX_MESSAGE_BYTES as u64 / 2;

/// Most commands in one batch. The agents' batcher sends at most 512.
pub const MAX_BATCH_ITEMS: usize = 4096;

impl Command {
    /// Refuses a command that must not become a log entry: encoded larger than
    /// [`MAX_COMMAND_BYTES`], a batch of more than [`MAX_BATCH_ITEMS`] commands, or a label
    /// set of more than [`MAX_LABELS_PER_SET`] labels. Call it before proposing.
    pub fn check_limits(&self) -> Result<(), RegistryError> {
        let size = crate::codec::encoded_size(self)
            .map_err(|e| RegistryError::CommandTooLarge(format!("it cannot be encoded: {e}")))?;
        if size > MAX_COMMAND_BYTES {
            return Err(RegistryError::CommandTooLarge(format!(
                "it is {size} bytes encoded, the limit is {MAX_COMMAND_BYTES}; split it into smaller writes"
            )));
        }
        match self {
            Command::Batch(items) => {
                if items.len() > MAX_BATCH_ITEMS {
                    return Err(RegistryError::CommandTooLarge(format!(
                        "a batch of {} commands, the limit is {MAX_BATCH_ITEMS}; split it",
                        items.len()
                    )));
                }
                items.iter().try_for_each(labels_ok)
            }
            other => labels_ok(other),
        }
    }
}

/// The label set a command carries, checked against the cap.
fn labels_ok<B>(item: &Command<B>) -> Result<(), RegistryError> {
    let labels: Option<&LabelSet> = match item {
        Command::AllocateIdentity { labels }
        | Command::ReleaseIdentity { labels }
        | Command::AllocateIdentityFor { labels, .. }
        | Command::ReleaseIdentityFor { labels, .. } => Some(labels),
        Command::AddEndpoint { endpoint } => Some(&endpoint.labels),
        _ => None,
    };
    labels.map_or(Ok(()), LabelSet::check_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{BatchItem, NewPolicy, Registry, MAX_LABELS_PER_SET};

    fn big_labels() -> LabelSet {
        // Built through serde, as a decoded command would be: `parse` would refuse it.
        let map: std::collections::BTreeMap<String, String> = (0..=MAX_LABELS_PER_SET)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        serde_json::from_value(serde_json::to_value(map).unwrap()).unwrap()
    }

    #[test]
    fn t63_check_limits_refuses_what_could_not_be_applied() {
        assert!(Command::RemoveNode { id: 2 }.check_limits().is_ok());
        let too_many = Command::AllocateIdentity {
            labels: big_labels(),
        };
        assert!(matches!(
            too_many.check_limits(),
            Err(RegistryError::InvalidLabels(_))
        ));
        let in_batch = Command::Batch(vec![BatchItem::AllocateIdentity {
            labels: big_labels(),
        }]);
        assert!(in_batch.check_limits().is_err());
        let long_batch = Command::Batch(vec![BatchItem::RemoveNode { id: 2 }; MAX_BATCH_ITEMS + 1]);
        assert!(matches!(
            long_batch.check_limits(),
            Err(RegistryError::CommandTooLarge(_))
        ));
        let huge = Command::PutPolicies {
            policies: vec![NewPolicy {
                name: "p".into(),
                source: "x".repeat(MAX_COMMAND_BYTES as usize),
            }],
            now: 0,
        };
        let err = huge.check_limits().unwrap_err().to_string();
        assert!(err.contains("split it into smaller writes"), "{err}");
        // And apply refuses the oversized label set too, should one be proposed anyway.
        let mut r = crate::registry::test_support::bootstrapped();
        let before: Registry = r.clone();
        assert!(matches!(
            r.apply(too_many),
            crate::registry::Response::Err(RegistryError::InvalidLabels(_))
        ));
        assert_eq!(r, before);
    }
}
