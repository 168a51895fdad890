//! IPAM: endpoint addresses out of a node's pod CIDR.
//!
//! Pure: the registry calls it with the addresses its endpoints already hold, so what is
//! allocated is exactly what Raft has committed, and an agent restart can never hand an
//! address out twice. The lowest free address is chosen, which keeps allocation
//! deterministic on every node applying the same log.
//!
//! A freed address rests for [`ADDRESS_REUSE_GRACE_SECS`] before it is handed out again
//! ([`allocate_after_grace`]): peers drop an address's conntrack entries when it leaves
//! their ipcache, and the grace gives every node time to do so before another identity
//! holds the address. A pool that is otherwise full still allocates: the address freed
//! longest ago is reused rather than refusing the endpoint.

use std::collections::{BTreeMap, BTreeSet};
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

/// How long (seconds, of the commands' `now`) a freed endpoint address is not handed out
/// again while any other address of the pod CIDR is free.
pub const ADDRESS_REUSE_GRACE_SECS: i64 = 600;

/// Whether an address freed at `freed_at` is still resting at `now`. A `now` before
/// `freed_at` (a new leader whose clock is behind) counts as resting.
pub fn resting(freed_at: i64, now: i64) -> bool {
    now.saturating_sub(freed_at) < ADDRESS_REUSE_GRACE_SECS
}

/// The lowest usable address of `cidr` that `used` does not contain.
pub fn allocate(cidr: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    usable(cidr).find(|a| !used.contains(a))
}

/// The lowest usable address of `cidr` that is neither in `used` nor resting (freed, by
/// `freed`, less than the grace period before `now`); when every free address is resting,
/// the one freed longest ago (the lowest of equals). None only when all are `used`.
pub fn allocate_after_grace(
    cidr: Ipv4Net,
    used: &BTreeSet<Ipv4Addr>,
    freed: &BTreeMap<Ipv4Addr, i64>,
    now: i64,
) -> Option<Ipv4Addr> {
    let is_resting = |a: &Ipv4Addr| freed.get(a).is_some_and(|t| resting(*t, now));
    usable(cidr)
        .find(|a| !used.contains(a) && !is_resting(a))
        .or_else(|| {
            freed
                .iter()
                .filter(|(a, _)| cidr.contains(*a) && !used.contains(a) && is_usable(cidr, **a))
                .min_by_key(|(a, t)| (**t, **a))
                .map(|(a, _)| *a)
        })
}

/// Whether `a` is an address of `cidr` that endpoints may get.
fn is_usable(cidr: Ipv4Net, a: Ipv4Addr) -> bool {
    let a = u32::from(a);
    a >= u32::from(cidr.network()).saturating_add(2)
        && a <= u32::from(cidr.broadcast()).saturating_sub(1)
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

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn a_freed_address_rests_for_the_grace_period_then_is_lowest_again() {
        let cidr = net("10.128.0.0/24");
        let used: BTreeSet<Ipv4Addr> = [ip("10.128.0.3")].into();
        let freed: BTreeMap<Ipv4Addr, i64> = [(ip("10.128.0.2"), 1_000)].into();
        let t = |now| allocate_after_grace(cidr, &used, &freed, now);
        assert_eq!(t(1_000), Some(ip("10.128.0.4")), "just freed: skipped");
        assert_eq!(
            t(1_000 + ADDRESS_REUSE_GRACE_SECS - 1),
            Some(ip("10.128.0.4")),
            "one second before the end of the grace"
        );
        assert_eq!(t(1_000 + ADDRESS_REUSE_GRACE_SECS), Some(ip("10.128.0.2")));
        assert_eq!(
            t(999),
            Some(ip("10.128.0.4")),
            "a clock behind: still resting"
        );
    }

    #[test]
    fn a_full_pool_reuses_the_address_freed_longest_ago() {
        // A /29: usable .2 - .6.
        let cidr = net("10.0.0.0/29");
        let used: BTreeSet<Ipv4Addr> = [ip("10.0.0.2"), ip("10.0.0.4"), ip("10.0.0.6")].into();
        let freed: BTreeMap<Ipv4Addr, i64> = [
            (ip("10.0.0.3"), 50),
            (ip("10.0.0.5"), 40),
            // Addresses of another CIDR and the gateway never count.
            (ip("10.0.1.7"), 1),
            (ip("10.0.0.1"), 1),
        ]
        .into();
        assert_eq!(
            allocate_after_grace(cidr, &used, &freed, 60),
            Some(ip("10.0.0.5"))
        );
        let mut freed = freed;
        freed.insert(ip("10.0.0.3"), 40);
        assert_eq!(
            allocate_after_grace(cidr, &used, &freed, 60),
            Some(ip("10.0.0.3")),
            "equal times: the lowest"
        );
        let all: BTreeSet<Ipv4Addr> = usable(cidr).collect();
        assert_eq!(allocate_after_grace(cidr, &all, &freed, 60), None);
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
