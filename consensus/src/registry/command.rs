//! Operations on [`Command`]s that are not applying them: turning a command into a batch item,
//! and re-stamping the time a command carries.

use super::{BatchItem, Command};

impl<B> Command<B> {
    /// The same command with its batch payload (if it is a batch) mapped by `f`; every other
    /// variant moves over unchanged. The one place that lists every variant besides apply.
    pub fn try_map_batch<C, E>(self, f: impl FnOnce(B) -> Result<C, E>) -> Result<Command<C>, E> {
        Ok(match self {
            Command::Batch(b) => Command::Batch(f(b)?),
            Command::Bootstrap {
                config,
                first_node,
                first_token,
                gossip_key,
            } => Command::Bootstrap {
                config,
                first_node,
                first_token,
                gossip_key,
            },
            Command::CreateToken { token } => Command::CreateToken { token },
            Command::RevokeToken { id } => Command::RevokeToken { id },
            Command::AdmitNode {
                token_id,
                presented_hash,
                node,
                now,
            } => Command::AdmitNode {
                token_id,
                presented_hash,
                node,
                now,
            },
            Command::RemoveNode { id } => Command::RemoveNode { id },
            Command::AllocateIdentity { labels } => Command::AllocateIdentity { labels },
            Command::ReleaseIdentity { labels } => Command::ReleaseIdentity { labels },
            Command::AddEndpoint { endpoint } => Command::AddEndpoint { endpoint },
            Command::RemoveEndpoint {
                node_id,
                container_id,
                ifname,
            } => Command::RemoveEndpoint {
                node_id,
                container_id,
                ifname,
            },
            Command::PutPolicies { policies, now } => Command::PutPolicies { policies, now },
            Command::DeletePolicy { name } => Command::DeletePolicy { name },
            Command::InstallGossipKey { key } => Command::InstallGossipKey { key },
            Command::UseGossipKey { id } => Command::UseGossipKey { id },
            Command::RemoveGossipKey { id } => Command::RemoveGossipKey { id },
            Command::AdmitSignedNode {
                token_id,
                presented_hash,
                node,
                node_id,
                cert,
                now,
            } => Command::AdmitSignedNode {
                token_id,
                presented_hash,
                node,
                node_id,
                cert,
                now,
            },
            Command::RecordCertificate { node_id, cert } => {
                Command::RecordCertificate { node_id, cert }
            }
            Command::AllocateIdentityFor { labels, node_id } => {
                Command::AllocateIdentityFor { labels, node_id }
            }
            Command::ReleaseIdentityFor { labels, node_id } => {
                Command::ReleaseIdentityFor { labels, node_id }
            }
            Command::ForgetLegacyCaKey => Command::ForgetLegacyCaKey,
            Command::BeginCaRotation {
                new_ca_cert_pem,
                now,
            } => Command::BeginCaRotation {
                new_ca_cert_pem,
                now,
            },
            Command::ReportCaRotation { node_id, phase } => {
                Command::ReportCaRotation { node_id, phase }
            }
            Command::AdvanceCaRotation { from } => Command::AdvanceCaRotation { from },
            Command::FinishCaRotation => Command::FinishCaRotation,
            Command::RemoveEndpointAt {
                node_id,
                container_id,
                ifname,
                now,
            } => Command::RemoveEndpointAt {
                node_id,
                container_id,
                ifname,
                now,
            },
        })
    }

    /// Sets the `now` of every command that carries one (inside a batch too), so that the
    /// leader judges tokens and stamps records with its own clock rather than the caller's.
    pub fn stamp_time(&mut self, now: i64)
    where
        B: StampItems,
    {
        match self {
            Command::AdmitNode { now: t, .. }
            | Command::AdmitSignedNode { now: t, .. }
            | Command::PutPolicies { now: t, .. }
            | Command::BeginCaRotation { now: t, .. }
            | Command::RemoveEndpointAt { now: t, .. } => *t = now,
            Command::AddEndpoint { endpoint } => endpoint.now = now,
            Command::Batch(items) => items.stamp_items(now),
            _ => {}
        }
    }
}

/// Batch payloads that [`Command::stamp_time`] can walk.
pub trait StampItems {
    fn stamp_items(&mut self, now: i64);
}

impl StampItems for Vec<BatchItem> {
    fn stamp_items(&mut self, now: i64) {
        for item in self {
            item.stamp_time(now);
        }
    }
}

impl StampItems for super::NotNested {
    fn stamp_items(&mut self, _: i64) {
        match *self {}
    }
}

/// A command becomes a batch item unless it is itself a batch; then the error holds that
/// batch's items (the caller may splice them in).
impl TryFrom<Command> for BatchItem {
    type Error = Vec<BatchItem>;

    fn try_from(cmd: Command) -> Result<BatchItem, Vec<BatchItem>> {
        cmd.try_map_batch(Err)
    }
}

impl From<BatchItem> for Command {
    fn from(item: BatchItem) -> Command {
        match item.try_map_batch(|never| -> Result<Vec<BatchItem>, ()> { match never {} }) {
            Ok(cmd) => cmd,
            Err(()) => unreachable!("a batch item holds no batch"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::test_support::*;
    use crate::registry::{BatchItem, Command, NewPolicy};

    #[test]
    fn t61_stamp_time_sets_now_everywhere_it_is_carried() {
        let admit = BatchItem::AdmitNode {
            token_id: "abcdef".into(),
            presented_hash: HASH_A.into(),
            node: new_node("n2"),
            now: 1,
        };
        let mut cmd = Command::Batch(vec![
            admit,
            BatchItem::PutPolicies {
                policies: vec![NewPolicy {
                    name: "p".into(),
                    source: "x".into(),
                }],
                now: 1,
            },
            BatchItem::try_from(new_endpoint(1, "c", "eth0", "/run/netns/a", &["a=b"])).unwrap(),
            BatchItem::RemoveNode { id: 3 },
            BatchItem::RemoveEndpointAt {
                node_id: 1,
                container_id: "c".into(),
                ifname: "eth0".into(),
                now: 1,
            },
        ]);
        cmd.stamp_time(42);
        let Command::Batch(items) = cmd else { panic!() };
        assert!(matches!(items[0], BatchItem::AdmitNode { now: 42, .. }));
        assert!(matches!(items[1], BatchItem::PutPolicies { now: 42, .. }));
        let BatchItem::AddEndpoint { endpoint } = &items[2] else {
            panic!()
        };
        assert_eq!(endpoint.now, 42);
        assert_eq!(items[3], BatchItem::RemoveNode { id: 3 });
        assert!(matches!(
            items[4],
            BatchItem::RemoveEndpointAt { now: 42, .. }
        ));
    }

    #[test]
    fn t62_a_batch_is_not_a_batch_item_and_items_convert_back() {
        let inner = vec![BatchItem::RemoveNode { id: 2 }];
        assert_eq!(
            BatchItem::try_from(Command::Batch(inner.clone())),
            Err(inner)
        );
        // A path `Command::X` does not take the default batch payload; a typed binding does.
        let cmd: Command = Command::RevokeToken { id: "x".into() };
        let item = BatchItem::try_from(cmd).unwrap();
        assert_eq!(
            <Command>::from(item),
            Command::RevokeToken { id: "x".into() }
        );
    }
}
