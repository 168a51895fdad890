//! Security identities: a label set maps to one number, unique and stable while referenced.
//!
//! Numbering follows Cilium's layout: 0-255 are reserved (0 unknown, 1 host, 2 world,
//! 3 unmanaged, 4 health, 5 init, 6 remote-node; the consts below are their one home), the
//! cluster id sits in bits 16-23, and the low 16 bits count from 256. Numbers are handed out from a moving cursor rather than "lowest free" so
//! that a number released a moment ago is not given to other labels while datapaths on
//! other nodes may still hold it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{LabelSet, Registry, RegistryError, Response};

/// A remote pod CIDR whose endpoint is not known yet (only "any identity" policy matches it).
pub const IDENTITY_UNKNOWN: u32 = 0;
/// The local host.
pub const IDENTITY_HOST: u32 = 1;
/// Anything outside the cluster (no ipcache entry).
pub const IDENTITY_WORLD: u32 = 2;
/// Endpoints not managed by membrane.
pub const IDENTITY_UNMANAGED: u32 = 3;
/// The agents' health checks.
pub const IDENTITY_HEALTH: u32 = 4;
/// Endpoints whose labels are not known yet.
pub const IDENTITY_INIT: u32 = 5;
/// Other nodes of the cluster.
pub const IDENTITY_REMOTE_NODE: u32 = 6;

/// Every reserved identity with the name tools print for it. The numbers are mirrored in
/// the datapath's C header, and the names follow Cilium's (`reserved:host` ...).
pub const RESERVED_IDENTITIES: [(u32, &str); 7] = [
    (IDENTITY_UNKNOWN, "reserved:unknown"),
    (IDENTITY_HOST, "reserved:host"),
    (IDENTITY_WORLD, "reserved:world"),
    (IDENTITY_UNMANAGED, "reserved:unmanaged"),
    (IDENTITY_HEALTH, "reserved:health"),
    (IDENTITY_INIT, "reserved:init"),
    (IDENTITY_REMOTE_NODE, "reserved:remote-node"),
];

/// The name of a reserved identity, `None` for any other number.
pub fn reserved_identity_name(id: u32) -> Option<&'static str> {
    RESERVED_IDENTITIES
        .iter()
        .find(|(n, _)| *n == id)
        .map(|(_, name)| *name)
}

/// First locally allocated number (low 16 bits); everything below is reserved.
pub const IDENTITY_FIRST_LOCAL: u32 = 256;
/// Last locally allocated number (low 16 bits).
pub const IDENTITY_MAX_LOCAL: u32 = 0xFFFF;

/// Most distinct identities one node's API may hold references on (`AllocateIdentityFor`),
/// so that no single caller can exhaust the cluster's 65,280 numbers.
pub const MAX_API_IDENTITIES_PER_NODE: usize = 1024;

/// `(node, identity) -> count` as a list in serde: JSON has no tuple keys.
pub(super) mod refs_as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<(u64, u32), u32>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let v: Vec<(u64, u32, u32)> = m.iter().map(|((n, i), c)| (*n, *i, *c)).collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<(u64, u32), u32>, D::Error> {
        let v = Vec::<(u64, u32, u32)>::deserialize(d)?;
        Ok(v.into_iter().map(|(n, i, c)| ((n, i), c)).collect())
    }
}

/// One allocated identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub id: u32,
    pub labels: LabelSet,
    /// How many holders (endpoints, API clients) use it; removed at zero.
    pub references: u64,
}

/// The identity table with its label index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TableRepr", into = "TableRepr")]
pub struct IdentityTable {
    cluster_id: u8,
    by_id: BTreeMap<u32, IdentityRecord>,
    by_labels: BTreeMap<LabelSet, u32>,
    /// Next local number to try.
    cursor: u32,
}

/// Serialised form: records only; the label index is rebuilt on load.
#[derive(Serialize, Deserialize)]
struct TableRepr {
    cluster_id: u8,
    records: Vec<IdentityRecord>,
    cursor: u32,
}

impl From<TableRepr> for IdentityTable {
    fn from(r: TableRepr) -> Self {
        let by_labels = r
            .records
            .iter()
            .map(|rec| (rec.labels.clone(), rec.id))
            .collect();
        let by_id = r.records.into_iter().map(|rec| (rec.id, rec)).collect();
        IdentityTable {
            cluster_id: r.cluster_id,
            by_id,
            by_labels,
            cursor: r.cursor,
        }
    }
}

impl From<IdentityTable> for TableRepr {
    fn from(t: IdentityTable) -> Self {
        TableRepr {
            cluster_id: t.cluster_id,
            records: t.by_id.into_values().collect(),
            cursor: t.cursor,
        }
    }
}

impl IdentityTable {
    pub fn new(cluster_id: u8) -> Self {
        IdentityTable {
            cluster_id,
            cursor: IDENTITY_FIRST_LOCAL,
            ..Default::default()
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &IdentityRecord> {
        self.by_id.values()
    }

    pub fn get(&self, id: u32) -> Option<&IdentityRecord> {
        self.by_id.get(&id)
    }

    pub fn by_labels(&self, labels: &LabelSet) -> Option<&IdentityRecord> {
        self.by_labels.get(labels).and_then(|id| self.by_id.get(id))
    }

    /// Returns the identity of `labels`, creating it if needed, and takes a reference.
    pub fn allocate(&mut self, labels: LabelSet) -> Result<(IdentityRecord, bool), RegistryError> {
        if let Some(id) = self.by_labels.get(&labels) {
            let rec = self
                .by_id
                .get_mut(id)
                .expect("label index points at a record");
            rec.references += 1;
            return Ok((rec.clone(), false));
        }
        let local = self.next_free_local()?;
        let id = (u32::from(self.cluster_id) << 16) | local;
        self.cursor = if local == IDENTITY_MAX_LOCAL {
            IDENTITY_FIRST_LOCAL
        } else {
            local + 1
        };
        let rec = IdentityRecord {
            id,
            labels: labels.clone(),
            references: 1,
        };
        self.by_labels.insert(labels, id);
        self.by_id.insert(id, rec.clone());
        Ok((rec, true))
    }

    /// Drops one reference; the identity is removed when none is left.
    /// Returns the id and the references left.
    pub fn release(&mut self, labels: &LabelSet) -> Result<(u32, u64), RegistryError> {
        let id = *self
            .by_labels
            .get(labels)
            .ok_or_else(|| RegistryError::IdentityNotFound {
                labels: labels.to_string(),
            })?;
        let rec = self
            .by_id
            .get_mut(&id)
            .expect("label index points at a record");
        rec.references = rec.references.saturating_sub(1);
        let left = rec.references;
        if left == 0 {
            self.by_id.remove(&id);
            self.by_labels.remove(labels);
        }
        Ok((id, left))
    }

    fn next_free_local(&self) -> Result<u32, RegistryError> {
        let count = IDENTITY_MAX_LOCAL - IDENTITY_FIRST_LOCAL + 1;
        let base = u32::from(self.cluster_id) << 16;
        let start = self.cursor.clamp(IDENTITY_FIRST_LOCAL, IDENTITY_MAX_LOCAL);
        (0..count)
            .map(|step| IDENTITY_FIRST_LOCAL + (start - IDENTITY_FIRST_LOCAL + step) % count)
            .find(|local| !self.by_id.contains_key(&(base | local)))
            .ok_or(RegistryError::IdentitySpaceExhausted {
                cluster_id: self.cluster_id,
                count,
            })
    }
}

impl Registry {
    pub fn identities(&self) -> impl Iterator<Item = &IdentityRecord> {
        self.identities.iter()
    }

    pub fn identity_by_labels(&self, labels: &LabelSet) -> Option<&IdentityRecord> {
        self.identities.by_labels(labels)
    }

    pub fn identity(&self, id: u32) -> Option<&IdentityRecord> {
        self.identities.get(id)
    }

    pub(super) fn allocate_identity(
        &mut self,
        labels: LabelSet,
    ) -> Result<Response, RegistryError> {
        self.config()?;
        labels.check_size()?;
        let (identity, created) = self.identities.allocate(labels)?;
        Ok(Response::Identity { identity, created })
    }

    /// Drops one anonymous reference (one taken by `AllocateIdentity`). References that
    /// endpoints or a node's API hold are not anonymous: releasing one of those would take
    /// the identity away from endpoints that still carry its number.
    pub(super) fn release_identity(
        &mut self,
        labels: &LabelSet,
    ) -> Result<Response, RegistryError> {
        self.config()?;
        let rec =
            self.identities
                .by_labels(labels)
                .ok_or_else(|| RegistryError::IdentityNotFound {
                    labels: labels.to_string(),
                })?;
        let held = self.held_references(rec.id);
        if rec.references <= held {
            return Err(RegistryError::IdentityInUse {
                id: rec.id,
                labels: labels.to_string(),
                held,
            });
        }
        let (id, references) = self.identities.release(labels)?;
        Ok(Response::Released {
            id,
            references,
            removed: references == 0,
        })
    }

    /// References on `id` that endpoints and nodes' API hold.
    fn held_references(&self, id: u32) -> u64 {
        let endpoints = self.endpoints.iter().filter(|e| e.identity == id).count() as u64;
        let api: u64 = self
            .api_identity_refs
            .iter()
            .filter(|((_, i), _)| *i == id)
            .map(|(_, c)| u64::from(*c))
            .sum();
        endpoints + api
    }

    /// Takes a reference for node `node_id`'s API, within its quota of distinct identities.
    pub(super) fn allocate_identity_for(
        &mut self,
        labels: LabelSet,
        node_id: u64,
    ) -> Result<Response, RegistryError> {
        self.config()?;
        labels.check_size()?;
        if !self.nodes.contains_key(&node_id) {
            return Err(RegistryError::NodeNotFound { id: node_id });
        }
        let already = self
            .identities
            .by_labels(&labels)
            .is_some_and(|rec| self.api_identity_refs.contains_key(&(node_id, rec.id)));
        if !already {
            let held = self
                .api_identity_refs
                .range((node_id, 0)..=(node_id, u32::MAX))
                .count();
            if held >= MAX_API_IDENTITIES_PER_NODE {
                return Err(RegistryError::IdentityQuotaExceeded {
                    node_id,
                    limit: MAX_API_IDENTITIES_PER_NODE,
                });
            }
        }
        let (identity, created) = self.identities.allocate(labels)?;
        *self
            .api_identity_refs
            .entry((node_id, identity.id))
            .or_insert(0) += 1;
        Ok(Response::Identity { identity, created })
    }

    /// Drops one reference that node `node_id`'s API took, and only such a reference.
    pub(super) fn release_identity_for(
        &mut self,
        labels: &LabelSet,
        node_id: u64,
    ) -> Result<Response, RegistryError> {
        self.config()?;
        let id = self
            .identities
            .by_labels(labels)
            .ok_or_else(|| RegistryError::IdentityNotFound {
                labels: labels.to_string(),
            })?
            .id;
        let Some(count) = self.api_identity_refs.get_mut(&(node_id, id)) else {
            return Err(RegistryError::IdentityNotHeld {
                node_id,
                labels: labels.to_string(),
            });
        };
        *count -= 1;
        if *count == 0 {
            self.api_identity_refs.remove(&(node_id, id));
        }
        let (id, references) = self.identities.release(labels)?;
        Ok(Response::Released {
            id,
            references,
            removed: references == 0,
        })
    }

    /// Releases every reference node `node_id`'s API holds (the node is being removed).
    pub(super) fn drop_api_identity_refs(&mut self, node_id: u64) {
        let held: Vec<((u64, u32), u32)> = self
            .api_identity_refs
            .range((node_id, 0)..=(node_id, u32::MAX))
            .map(|(k, c)| (*k, *c))
            .collect();
        for (key, count) in held {
            self.api_identity_refs.remove(&key);
            let Some(labels) = self.identities.get(key.1).map(|r| r.labels.clone()) else {
                continue;
            };
            for _ in 0..count {
                let _ = self.identities.release(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::{bootstrapped, refused};
    use crate::registry::Command;

    fn labels(s: &str) -> LabelSet {
        LabelSet::parse(&s.split(',').collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn ids_carry_the_cluster_id_and_start_at_256() {
        let mut t = IdentityTable::new(3);
        let (rec, created) = t.allocate(labels("app=web")).unwrap();
        assert!(created);
        assert_eq!(rec.id, (3 << 16) | 256);
    }

    #[test]
    fn same_labels_same_id_and_references_count() {
        let mut t = IdentityTable::new(1);
        let (a, _) = t.allocate(labels("app=web,tier=fe")).unwrap();
        let (b, created) = t.allocate(labels("tier=fe,app=web")).unwrap();
        assert!(!created);
        assert_eq!(a.id, b.id);
        assert_eq!(b.references, 2);
        assert_eq!(t.release(&labels("app=web,tier=fe")).unwrap(), (a.id, 1));
        assert_eq!(t.release(&labels("app=web,tier=fe")).unwrap(), (a.id, 0));
        assert!(t.by_labels(&labels("app=web,tier=fe")).is_none());
        assert!(matches!(
            t.release(&labels("app=web,tier=fe")),
            Err(RegistryError::IdentityNotFound { .. })
        ));
    }

    #[test]
    fn released_numbers_are_not_reused_at_once() {
        let mut t = IdentityTable::new(1);
        let (a, _) = t.allocate(labels("app=a")).unwrap();
        t.release(&labels("app=a")).unwrap();
        let (b, _) = t.allocate(labels("app=b")).unwrap();
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn the_cursor_wraps_and_skips_numbers_in_use() {
        let mut t = IdentityTable::new(1);
        let (first, _) = t.allocate(labels("app=first")).unwrap();
        t.cursor = IDENTITY_MAX_LOCAL;
        let (last, _) = t.allocate(labels("app=last")).unwrap();
        assert_eq!(last.id & 0xFFFF, IDENTITY_MAX_LOCAL);
        let (next, _) = t.allocate(labels("app=next")).unwrap();
        assert_eq!(
            next.id,
            first.id + 1,
            "wrapped to 256, which is taken, so 257"
        );
    }

    #[test]
    fn exhaustion_is_an_error_not_a_collision() {
        let mut t = IdentityTable::new(1);
        for i in IDENTITY_FIRST_LOCAL..=IDENTITY_MAX_LOCAL {
            t.allocate(labels(&format!("n={i}"))).unwrap();
        }
        assert!(matches!(
            t.allocate(labels("n=one-too-many")),
            Err(RegistryError::IdentitySpaceExhausted { .. })
        ));
    }

    #[test]
    fn serde_round_trip_rebuilds_the_index() {
        let mut t = IdentityTable::new(2);
        t.allocate(labels("app=web")).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        let back: IdentityTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert!(back.by_labels(&labels("app=web")).is_some());
    }

    #[test]
    fn reserved_identities_have_one_name_each_and_sit_below_the_local_range() {
        assert_eq!(reserved_identity_name(IDENTITY_HOST), Some("reserved:host"));
        assert_eq!(
            reserved_identity_name(IDENTITY_WORLD),
            Some("reserved:world")
        );
        assert_eq!(
            reserved_identity_name(IDENTITY_REMOTE_NODE),
            Some("reserved:remote-node")
        );
        assert_eq!(reserved_identity_name(IDENTITY_FIRST_LOCAL), None);
        for (i, (id, _)) in RESERVED_IDENTITIES.iter().enumerate() {
            assert_eq!(*id, i as u32, "the table is in number order, without holes");
            assert!(*id < IDENTITY_FIRST_LOCAL);
        }
    }

    #[test]
    fn t40_identities_through_commands() {
        let mut r = bootstrapped();
        let labels = LabelSet::parse(&["app=web"]).unwrap();
        let Response::Identity {
            identity,
            created: true,
        } = r.apply(Command::AllocateIdentity {
            labels: labels.clone(),
        })
        else {
            panic!()
        };
        assert_eq!(identity.id, (7 << 16) | 256);
        let again = r.apply(Command::AllocateIdentity {
            labels: labels.clone(),
        });
        assert!(matches!(again, Response::Identity { created: false, .. }));
        assert_eq!(
            r.apply(Command::ReleaseIdentity {
                labels: labels.clone()
            }),
            Response::Released {
                id: identity.id,
                references: 1,
                removed: false
            }
        );
        assert_eq!(
            r.apply(Command::ReleaseIdentity {
                labels: labels.clone()
            }),
            Response::Released {
                id: identity.id,
                references: 0,
                removed: true
            }
        );
        refused(&mut r, Command::ReleaseIdentity { labels }, |e| {
            matches!(e, RegistryError::IdentityNotFound { .. })
        });
    }

    #[test]
    fn t42_release_never_drops_references_that_endpoints_hold() {
        use crate::registry::test_support::{added, new_endpoint};
        let mut r = bootstrapped();
        let web = labels("app=web");
        let (ep, _) = added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
        refused(
            &mut r,
            Command::ReleaseIdentity {
                labels: web.clone(),
            },
            |e| matches!(e, RegistryError::IdentityInUse { held: 1, .. }),
        );
        // An anonymous reference on top may be released, down to the endpoint's.
        r.apply(Command::AllocateIdentity {
            labels: web.clone(),
        });
        assert!(matches!(
            r.apply(Command::ReleaseIdentity {
                labels: web.clone()
            }),
            Response::Released { references: 1, .. }
        ));
        refused(&mut r, Command::ReleaseIdentity { labels: web }, |e| {
            matches!(e, RegistryError::IdentityInUse { .. })
        });
        assert_eq!(r.identity(ep.identity).unwrap().references, 1);
        let msg = RegistryError::IdentityInUse {
            id: 1,
            labels: "a=b".into(),
            held: 1,
        }
        .to_string();
        assert!(msg.contains("remove those endpoints"), "{msg}");
    }

    #[test]
    fn t43_api_references_are_counted_per_node_and_released_only_by_it() {
        use crate::registry::test_support::signed_node;
        let mut r = bootstrapped();
        let n2 = signed_node(&mut r, "n2");
        let web = labels("app=web");
        let alloc = |node_id| Command::AllocateIdentityFor {
            labels: web.clone(),
            node_id,
        };
        let release = |node_id| Command::ReleaseIdentityFor {
            labels: web.clone(),
            node_id,
        };
        assert!(matches!(
            r.apply(alloc(1)),
            Response::Identity { created: true, .. }
        ));
        assert!(matches!(r.apply(alloc(1)), Response::Identity { .. }));
        assert!(matches!(r.apply(alloc(n2.id)), Response::Identity { .. }));
        assert_eq!(r.identity_by_labels(&web).unwrap().references, 3);
        // Neither the anonymous release nor a node that took nothing can drop them.
        refused(
            &mut r,
            Command::ReleaseIdentity {
                labels: web.clone(),
            },
            |e| matches!(e, RegistryError::IdentityInUse { held: 3, .. }),
        );
        refused(&mut r, release(9), |e| {
            matches!(e, RegistryError::IdentityNotHeld { node_id: 9, .. })
        });
        refused(&mut r, alloc(9), |e| {
            matches!(e, RegistryError::NodeNotFound { id: 9 })
        });
        assert!(matches!(
            r.apply(release(1)),
            Response::Released { references: 2, .. }
        ));
        // Removing node 2 drops its reference; node 1 keeps its own.
        r.apply(Command::RemoveNode { id: n2.id })
            .into_result()
            .unwrap();
        assert_eq!(r.identity_by_labels(&web).unwrap().references, 1);
        assert!(matches!(
            r.apply(release(1)),
            Response::Released { removed: true, .. }
        ));
        refused(&mut r, release(1), |e| {
            matches!(e, RegistryError::IdentityNotFound { .. })
        });
    }

    #[test]
    fn t44_the_per_node_quota_counts_distinct_identities() {
        let mut r = bootstrapped();
        for i in 0..MAX_API_IDENTITIES_PER_NODE {
            r.apply(Command::AllocateIdentityFor {
                labels: labels(&format!("n={i}")),
                node_id: 1,
            })
            .into_result()
            .unwrap();
        }
        refused(
            &mut r,
            Command::AllocateIdentityFor {
                labels: labels("n=one-more"),
                node_id: 1,
            },
            |e| {
                matches!(
                    e,
                    RegistryError::IdentityQuotaExceeded {
                        node_id: 1,
                        limit: MAX_API_IDENTITIES_PER_NODE
                    }
                )
            },
        );
        // Another reference on one it holds is not a new identity.
        assert!(matches!(
            r.apply(Command::AllocateIdentityFor {
                labels: labels("n=0"),
                node_id: 1,
            }),
            Response::Identity { created: false, .. }
        ));
    }
}
