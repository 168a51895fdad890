//! The endpoint calls of the local API: endpoint list and get (every node's, from the
//! registry copy; this node's own with their live state) and the BPF endpoints map.

use std::collections::BTreeMap;
use std::sync::Arc;

use membrane_consensus::registry::EndpointRecord;
use membrane_proto::v1 as pb;
use tonic::Status;

use super::proto::{bpf_entry, detail, record_detail};
use super::{EndpointManager, EndpointsSlot};
use crate::registry::client::RegistryClient;

/// What the endpoint slice of the local API reads.
pub struct EndpointsApi {
    pub client: Arc<RegistryClient>,
    /// This node's id: its endpoints are shown live, and endpoint numbers are its own.
    pub node_id: u64,
    pub endpoints: EndpointsSlot,
}

/// The endpoint manager, or the answer to give while the datapath is still coming up.
pub fn ready(slot: &EndpointsSlot) -> Result<&Arc<EndpointManager>, Status> {
    slot.get().ok_or_else(|| {
        Status::unavailable(
            "the datapath is not up yet (the agent is starting); try again in a moment",
        )
    })
}

impl EndpointsApi {
    pub fn list(&self, req: pb::EndpointListRequest) -> pb::EndpointListResponse {
        let endpoints = self
            .all_endpoints()
            .into_iter()
            .filter(|e| !req.local_only || e.node_id == self.node_id)
            .collect();
        pb::EndpointListResponse { endpoints }
    }

    pub fn get(&self, req: pb::EndpointGetRequest) -> Result<pb::EndpointDetail, Status> {
        let key = req.key.trim();
        if key.is_empty() {
            return Err(Status::invalid_argument(
                "give an endpoint number of this node, a container id or an IPv4 address",
            ));
        }
        find(self.all_endpoints(), key, self.node_id).ok_or_else(|| {
            Status::not_found(format!(
                "no endpoint {key:?} (an endpoint number is looked up on this node only; see `membrane endpoint list`)"
            ))
        })
    }

    pub fn bpf_list(&self) -> Result<pb::BpfEndpointResponse, Status> {
        let dp = ready(&self.endpoints)?.datapath();
        let entries = dp
            .bpf()
            .endpoints()
            .map_err(|e| Status::internal(format!("cannot read the endpoints map: {e}")))?;
        Ok(pb::BpfEndpointResponse {
            entries: entries.iter().map(|(ip, v)| bpf_entry(*ip, v)).collect(),
            pin_dir: dp.pin_dir.display().to_string(),
        })
    }

    /// Every endpoint in this node's registry copy; this node's own with their live state.
    fn all_endpoints(&self) -> Vec<pb::EndpointDetail> {
        let manager = self.endpoints.get();
        let (records, names): (Vec<EndpointRecord>, BTreeMap<u64, String>) =
            self.client.local(|r| {
                (
                    r.endpoints().cloned().collect(),
                    r.nodes().map(|n| (n.id, n.name.clone())).collect(),
                )
            });
        records
            .iter()
            .map(|rec| {
                let node_name = names.get(&rec.node_id).map(String::as_str).unwrap_or("");
                let live = (rec.node_id == self.node_id)
                    .then(|| manager.and_then(|m| m.get_live(&rec.container_id, &rec.ifname)))
                    .flatten();
                match live {
                    Some(ep) => detail(&ep, node_name),
                    None => record_detail(rec, node_name, self.node_id),
                }
            })
            .collect()
    }
}

/// The endpoint `key` names: an IPv4 address (any node's), an endpoint number (this
/// node's only: numbers are node-local), or a container id (this node's first).
fn find(all: Vec<pb::EndpointDetail>, key: &str, me: u64) -> Option<pb::EndpointDetail> {
    if let Ok(ip) = key.parse::<std::net::Ipv4Addr>() {
        all.into_iter().find(|e| e.ipv4 == ip.to_string())
    } else if let Ok(id) = key.parse::<u32>() {
        all.into_iter().find(|e| e.node_id == me && e.id == id)
    } else {
        let mut matching: Vec<pb::EndpointDetail> =
            all.into_iter().filter(|e| e.container_id == key).collect();
        matching.sort_by_key(|e| e.node_id != me);
        matching.into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::proto::tests::record;

    fn all() -> Vec<pb::EndpointDetail> {
        vec![
            record_detail(&record(2, 1, "shared", [10, 0, 1, 1]), "n2", 1),
            record_detail(&record(2, 2, "c2", [10, 0, 1, 2]), "n2", 1),
            record_detail(&record(1, 2, "c1", [10, 0, 0, 2]), "n1", 1),
            record_detail(&record(1, 3, "shared", [10, 0, 0, 3]), "n1", 1),
        ]
    }

    #[test]
    fn an_address_finds_any_nodes_endpoint() {
        let e = find(all(), "10.0.1.2", 1).unwrap();
        assert_eq!((e.node_id, e.container_id.as_str()), (2, "c2"));
        assert!(find(all(), "10.9.9.9", 1).is_none());
    }

    #[test]
    fn a_number_finds_this_nodes_endpoint_only() {
        let e = find(all(), "2", 1).unwrap();
        assert_eq!((e.node_id, e.container_id.as_str()), (1, "c1"));
        // Endpoint 1 exists, but on node 2.
        assert!(find(all(), "1", 1).is_none());
    }

    #[test]
    fn a_container_id_prefers_this_node() {
        let e = find(all(), "shared", 1).unwrap();
        assert_eq!((e.node_id, e.id), (1, 3));
        let e = find(all(), "shared", 2).unwrap();
        assert_eq!((e.node_id, e.id), (2, 1));
        let e = find(all(), "c2", 1).unwrap();
        assert_eq!(e.node_id, 2);
        assert!(find(all(), "nope", 1).is_none());
    }
}
