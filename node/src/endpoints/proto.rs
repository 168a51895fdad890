//! Endpoints as the proto messages show them, for the plugin API and the local API alike.

use membrane_consensus::registry::EndpointRecord;
use membrane_ebpf::EndpointValue;
use membrane_proto::v1 as pb;

use super::LocalEndpoint;

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The detail of a live endpoint of this node.
pub fn detail(ep: &LocalEndpoint, node_name: &str) -> pb::EndpointDetail {
    pb::EndpointDetail {
        id: ep.record.id,
        container_id: ep.record.container_id.clone(),
        ifname: ep.record.ifname.clone(),
        netns: ep.record.netns.clone(),
        host_ifname: ep.host_ifname.clone(),
        ipv4: ep.record.ipv4.to_string(),
        mac: mac_string(&ep.link.container_mac),
        identity: ep.record.identity,
        labels: ep.record.labels.to_strings(),
        node_id: ep.record.node_id,
        node_name: node_name.to_string(),
        state: "ready".into(),
        created_at_unix: ep.record.created_at,
    }
}

/// The detail of an endpoint known only from the registry: another node's ("remote"), or
/// one of this node's that is not live ("not-ready").
pub fn record_detail(rec: &EndpointRecord, node_name: &str, me: u64) -> pb::EndpointDetail {
    pb::EndpointDetail {
        id: rec.id,
        container_id: rec.container_id.clone(),
        ifname: rec.ifname.clone(),
        netns: rec.netns.clone(),
        host_ifname: crate::netdev::host_ifname(&rec.container_id, &rec.ifname),
        ipv4: rec.ipv4.to_string(),
        mac: String::new(),
        identity: rec.identity,
        labels: rec.labels.to_strings(),
        node_id: rec.node_id,
        node_name: node_name.to_string(),
        state: if rec.node_id == me {
            "not-ready"
        } else {
            "remote"
        }
        .into(),
        created_at_unix: rec.created_at,
    }
}

/// One entry of the BPF endpoints map.
pub fn bpf_entry(ip: std::net::Ipv4Addr, v: &EndpointValue) -> pb::BpfEndpointEntry {
    pb::BpfEndpointEntry {
        ipv4: ip.to_string(),
        endpoint_id: v.endpoint_id,
        ifindex: v.ifindex,
        identity: v.identity,
        mac: mac_string(&v.mac),
        host_mac: mac_string(&v.host_mac),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use membrane_consensus::registry::LabelSet;

    pub(crate) fn record(node_id: u64, id: u32, container_id: &str, ip: [u8; 4]) -> EndpointRecord {
        EndpointRecord {
            node_id,
            id,
            container_id: container_id.into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            ipv4: ip.into(),
            identity: 300,
            labels: LabelSet::parse(&["app=web"]).unwrap(),
            created_at: 5,
        }
    }

    #[test]
    fn macs_are_lowercase_hex_with_colons() {
        assert_eq!(
            mac_string(&[0x0a, 0xbc, 0, 1, 0xff, 0x10]),
            "0a:bc:00:01:ff:10"
        );
    }

    #[test]
    fn a_live_endpoint_is_ready_with_its_links() {
        let ep = LocalEndpoint {
            record: record(1, 3, "c1", [10, 0, 0, 3]),
            host_ifname: "lxc1".into(),
            link: crate::netdev::EndpointLink {
                host_ifindex: 9,
                host_mac: [2, 0, 0, 0, 0, 1],
                container_ifindex: 2,
                container_mac: [2, 0, 0, 0, 0, 2],
            },
            gateway: [10, 0, 0, 1].into(),
            mtu: 1450,
        };
        let d = detail(&ep, "n1");
        assert_eq!(d.state, "ready");
        assert_eq!(d.mac, "02:00:00:00:00:02");
        assert_eq!(d.host_ifname, "lxc1");
        assert_eq!((d.id, d.node_id, d.node_name.as_str()), (3, 1, "n1"));
        assert_eq!(d.ipv4, "10.0.0.3");
        assert_eq!(d.labels, vec!["app=web".to_string()]);
    }

    #[test]
    fn a_record_alone_is_not_ready_here_and_remote_elsewhere() {
        let rec = record(1, 3, "c1", [10, 0, 0, 3]);
        let here = record_detail(&rec, "n1", 1);
        assert_eq!(here.state, "not-ready");
        assert_eq!(here.mac, "");
        assert_eq!(here.host_ifname, crate::netdev::host_ifname("c1", "eth0"));
        assert_eq!(record_detail(&rec, "n1", 2).state, "remote");
    }

    #[test]
    fn bpf_entries_show_both_macs() {
        let v = EndpointValue {
            ifindex: 9,
            identity: 300,
            endpoint_id: 3,
            mac: [2, 0, 0, 0, 0, 2],
            host_mac: [2, 0, 0, 0, 0, 1],
            ..Default::default()
        };
        let e = bpf_entry([10, 0, 0, 3].into(), &v);
        assert_eq!(e.ipv4, "10.0.0.3");
        assert_eq!((e.ifindex, e.identity, e.endpoint_id), (9, 300, 3));
        assert_eq!(e.mac, "02:00:00:00:00:02");
        assert_eq!(e.host_mac, "02:00:00:00:00:01");
    }
}
