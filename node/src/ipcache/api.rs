//! The ipcache call of the local API: the BPF ipcache map as it is.

use ipnet::Ipv4Net;
use membrane_ebpf::IpcacheValue;
use membrane_proto::v1 as pb;
use tonic::Status;

use crate::endpoints::api::ready;
use crate::endpoints::EndpointsSlot;

/// What the ipcache slice of the local API reads: the datapath, through the endpoint
/// manager that holds it once it is up.
pub struct IpcacheApi {
    pub endpoints: EndpointsSlot,
}

impl IpcacheApi {
    pub fn bpf_list(&self) -> Result<pb::BpfIpcacheResponse, Status> {
        let entries = ready(&self.endpoints)?
            .datapath()
            .bpf()
            .ipcache()
            .map_err(|e| Status::internal(format!("cannot read the ipcache map: {e}")))?;
        Ok(pb::BpfIpcacheResponse {
            entries: entries
                .iter()
                .map(|(cidr, v)| bpf_entry(*cidr, v))
                .collect(),
        })
    }
}

/// One entry of the BPF ipcache map; a local entry has no tunnel endpoint.
fn bpf_entry(cidr: Ipv4Net, v: &IpcacheValue) -> pb::BpfIpcacheEntry {
    pb::BpfIpcacheEntry {
        cidr: cidr.to_string(),
        identity: v.identity,
        tunnel_endpoint: v
            .tunnel_endpoint()
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        flags: v.flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_entries_have_no_tunnel_endpoint() {
        let e = bpf_entry("10.0.0.3/32".parse().unwrap(), &IpcacheValue::local(300));
        assert_eq!(e.cidr, "10.0.0.3/32");
        assert_eq!(e.identity, 300);
        assert_eq!(e.tunnel_endpoint, "");
    }

    #[test]
    fn remote_entries_name_their_node() {
        let v = IpcacheValue::remote(0, [192, 168, 1, 2].into());
        let e = bpf_entry("10.0.1.0/24".parse().unwrap(), &v);
        assert_eq!(e.tunnel_endpoint, "192.168.1.2");
        assert_eq!(e.flags, v.flags);
    }
}
