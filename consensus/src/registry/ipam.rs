//! IPAM: endpoint addresses out of a node's pod CIDR.
//!
//! Pure: the registry calls it with the addresses its endpoints already hold, so what is
//! allocated is exactly what Raft has committed, and an agent restart can never hand an
//! address out twice. The lowest free address is chosen, which keeps allocation
//! deterministic on every node applying the same log.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The gateway address of a pod CIDR: its first host address (`.1` of a /24). Endpoints
/// route everything through it; it is never given to an endpoint.
pub fn gateway(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()).wrapping_add(1))
}

/// The addresses endpoints may get: everything in `cidr` except the network address, the
/// gateway and the broadcast address.
pub fn usable(cidr: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(cidr.network()).saturating_add(2);
    let last = u32::from(cidr.broadcast()).saturating_sub(1);
    (first..=last).map(Ipv4Addr::from)
}

/// How many addresses of `cidr` endpoints may get.
pub fn capacity(cidr: Ipv4Net) -> u64 {
    let hosts = 1u64 << (32 - u32::from(cidr.prefix_len()));
    hosts.saturating_sub(3)
}

/// The lowest usable address of `cidr` that `used` does not contain.
pub fn allocate(cidr: Ipv4Net, used: &std::collections::BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    usable(cidr).find(|a| !used.contains(a))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn network_gateway_and_broadcast_are_never_given_out() {
        let cidr = net("10.128.3.0/24");
        assert_eq!(gateway(cidr), Ipv4Addr::new(10, 128, 3, 1));
        let all: Vec<Ipv4Addr> = usable(cidr).collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 128, 3, 2)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 128, 3, 254)));
        assert_eq!(all.len() as u64, capacity(cidr));
        assert_eq!(capacity(cidr), 253);
    }

    #[test]
    fn lowest_free_address_is_chosen_and_holes_are_refilled() {
        let cidr = net("10.128.0.0/24");
        let mut used = BTreeSet::new();
        assert_eq!(allocate(cidr, &used), Some(Ipv4Addr::new(10, 128, 0, 2)));
        used.extend([Ipv4Addr::new(10, 128, 0, 2), Ipv4Addr::new(10, 128, 0, 4)]);
        assert_eq!(allocate(cidr, &used), Some(Ipv4Addr::new(10, 128, 0, 3)));
    }

    #[test]
    fn a_slash_30_holds_one_endpoint() {
        let cidr = net("10.0.0.4/30");
        assert_eq!(capacity(cidr), 1);
        let mut used = BTreeSet::new();
        let a = allocate(cidr, &used).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 6));
        used.insert(a);
        assert_eq!(allocate(cidr, &used), None);
    }
}
