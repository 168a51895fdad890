//! The endpoint's veth pair (docs/datapath.md, "An endpoint").

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::stream::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::route::RouteScope;
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::link::{connect, delete_index, get_link, mac_of, EEXIST};
use super::netns::{in_netns, open_netns};
use super::{validate_ifname, NetdevError};

/// What to build for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLinkSpec {
    /// Host-side veth name, in the caller's namespace (see [`super::host_ifname`]).
    pub host_ifname: String,
    /// The interface name inside the endpoint's namespace (CNI_IFNAME, usually eth0).
    pub container_ifname: String,
    /// The endpoint's network namespace (/run/netns/NAME, /proc/PID/ns/net, ...).
    pub netns_path: PathBuf,
    /// The endpoint's address, configured as a /32.
    pub address: Ipv4Addr,
    /// The gateway (the pod CIDR's first address); answered by the host side's MAC.
    pub gateway: Ipv4Addr,
    /// MTU of both ends.
    pub mtu: u32,
}

/// What was built: the two ends' indexes and MACs, for the endpoints map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointLink {
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub container_ifindex: u32,
    pub container_mac: [u8; 6],
}

/// Lowest MTU the kernel takes for IPv4 (RFC 791); anything below is a caller bug.
const MIN_MTU: u32 = 68;

/// Creates the endpoint's veth pair and configures both ends:
///
/// - host side `host_ifname` in the caller's namespace: MTU, up, route `address/32 dev
///   host_ifname scope link`;
/// - peer `container_ifname` created directly inside the namespace at `netns_path`
///   (by fd): MTU, IPv6 off, lo and the interface up, `address/32`, `gateway dev IF scope
///   link`, `default via gateway`, permanent neighbour `gateway -> host-side MAC`.
///
/// On any failure after the pair exists the host side is deleted (which deletes the
/// peer), so nothing half-made is left. The work runs in its own task: if the caller
/// stops waiting (a cancelled request), creation or rollback still runs to the end
/// instead of stopping between two netlink requests.
pub async fn create_endpoint_link(spec: &EndpointLinkSpec) -> Result<EndpointLink, NetdevError> {
    let spec = spec.clone();
    tokio::spawn(async move { create(&spec).await })
        .await
        .map_err(|e| {
            NetdevError::io(
                "creating the endpoint link",
                std::io::Error::other(format!("the task failed: {e}")),
            )
        })?
}

async fn create(spec: &EndpointLinkSpec) -> Result<EndpointLink, NetdevError> {
    validate_ifname(&spec.host_ifname)?;
    validate_ifname(&spec.container_ifname)?;
    if spec.mtu < MIN_MTU {
        return Err(NetdevError::Invalid {
            what: "MTU",
            detail: format!("{} is below the IPv4 minimum of {MIN_MTU}", spec.mtu),
        });
    }
    for (what, ip) in [
        ("endpoint address", spec.address),
        ("gateway", spec.gateway),
    ] {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return Err(NetdevError::Invalid {
                what,
                detail: format!("{ip} is not a unicast address"),
            });
        }
    }
    if spec.address == spec.gateway {
        return Err(NetdevError::Invalid {
            what: "endpoint address",
            detail: format!("{} is also the gateway", spec.address),
        });
    }
    let handle = connect()?;

    // Checks first, so that the common collisions get their own errors and nothing is made.
    if get_link(&handle, &spec.host_ifname).await?.is_some() {
        return Err(NetdevError::HostNameTaken {
            name: spec.host_ifname.clone(),
        });
    }
    if container_name_taken(&spec.netns_path, &spec.container_ifname).await? {
        return Err(NetdevError::ContainerNameTaken {
            ifname: spec.container_ifname.clone(),
            netns: spec.netns_path.clone(),
        });
    }

    // The peer is created straight in the target namespace under its final name, so it
    // never appears in the node's namespace under a temporary name.
    let ns_file = open_netns(&spec.netns_path)?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(spec.container_ifname.clone())
        .mtu(spec.mtu)
        .setns_by_fd(ns_file.as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(spec.host_ifname.clone())
        .mtu(spec.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    if let Err(e) = handle.link().add(veth).execute().await {
        let err = NetdevError::netlink("creating the veth pair", e);
        if err.errno() == Some(EEXIST) {
            // Lost a race with someone creating either name since the checks: say which.
            if get_link(&handle, &spec.host_ifname).await?.is_some() {
                return Err(NetdevError::HostNameTaken {
                    name: spec.host_ifname.clone(),
                });
            }
            return Err(NetdevError::ContainerNameTaken {
                ifname: spec.container_ifname.clone(),
                netns: spec.netns_path.clone(),
            });
        }
        return Err(err);
    }
    drop(ns_file);

    match configure(&handle, spec).await {
        Ok(link) => {
            tracing::info!(
                host = %spec.host_ifname,
                host_ifindex = link.host_ifindex,
                container = %spec.container_ifname,
                container_ifindex = link.container_ifindex,
                netns = %spec.netns_path.display(),
                address = %spec.address,
                mtu = spec.mtu,
                "endpoint link created"
            );
            Ok(link)
        }
        Err(err) => {
            tracing::warn!(
                host = %spec.host_ifname,
                netns = %spec.netns_path.display(),
                error = %err,
                "endpoint link setup failed, deleting the veth pair"
            );
            if let Err(cleanup) = delete_by_name(&handle, &spec.host_ifname).await {
                tracing::error!(
                    host = %spec.host_ifname,
                    error = %cleanup,
                    "could not delete the half-made veth pair; delete it by hand"
                );
            }
            Err(err)
        }
    }
}

async fn delete_by_name(handle: &Handle, name: &str) -> Result<bool, NetdevError> {
    match get_link(handle, name).await? {
        Some(l) => delete_index(handle, l.header.index, name).await,
        None => Ok(false),
    }
}

/// Everything after the pair exists; any error here makes the caller delete the pair.
async fn configure(handle: &Handle, spec: &EndpointLinkSpec) -> Result<EndpointLink, NetdevError> {
    let host = get_link(handle, &spec.host_ifname).await?.ok_or_else(|| {
        NetdevError::io(
            format!("looking up the new host side {:?}", spec.host_ifname),
            std::io::Error::other("it vanished right after creation"),
        )
    })?;
    let host_ifindex = host.header.index;
    let host_mac = mac_of(&host);

    // Container side, on a thread inside the namespace.
    let ifname = spec.container_ifname.clone();
    let (address, gateway) = (spec.address, spec.gateway);
    let (container_ifindex, container_mac) = in_netns(&spec.netns_path, move |h| async move {
        configure_container(&h, &ifname, address, gateway, host_mac).await
    })
    .await?;

    #[cfg(test)]
    if fault::take(&spec.host_ifname) {
        return Err(NetdevError::io(
            "injected test fault",
            std::io::Error::other("after the container side was configured"),
        ));
    }

    // The host side has no address; IPv6 off keeps it from sending router solicitations
    // and MLD reports into the endpoint.
    disable_ipv6(&spec.host_ifname)?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(host_ifindex).up().build())
        .execute()
        .await
        .map_err(|e| {
            NetdevError::netlink(format!("setting host side {:?} up", spec.host_ifname), e)
        })?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(spec.address, 32)
        .output_interface(host_ifindex)
        .scope(RouteScope::Link)
        .build();
    // Replace: a leftover route to this /32 from a deleted endpoint must not block a new one.
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            NetdevError::netlink(
                format!("adding route {}/32 dev {}", spec.address, spec.host_ifname),
                e,
            )
        })?;

    Ok(EndpointLink {
        host_ifindex,
        host_mac,
        container_ifindex,
        container_mac,
    })
}

/// Runs inside the endpoint's namespace.
async fn configure_container(
    h: &Handle,
    ifname: &str,
    address: Ipv4Addr,
    gateway: Ipv4Addr,
    host_mac: [u8; 6],
) -> Result<(u32, [u8; 6]), NetdevError> {
    let link = get_link(h, ifname).await?.ok_or_else(|| {
        NetdevError::io(
            format!("looking up {ifname:?} in the endpoint's netns"),
            std::io::Error::other("the veth peer did not arrive in the namespace"),
        )
    })?;
    let index = link.header.index;
    let mac = mac_of(&link);

    // Before up, so no router solicitation or DAD is ever sent.
    disable_ipv6(ifname)?;

    if let Some(lo) = get_link(h, "lo").await? {
        h.link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .map_err(|e| NetdevError::netlink("setting lo up in the endpoint's netns", e))?;
    }
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| {
            NetdevError::netlink(format!("setting {ifname:?} up in the endpoint's netns"), e)
        })?;

    h.address()
        .add(index, IpAddr::V4(address), 32)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            NetdevError::netlink(format!("adding address {address}/32 to {ifname:?}"), e)
        })?;

    let gw_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(gateway, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    h.route()
        .add(gw_route)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            NetdevError::netlink(format!("adding route {gateway} dev {ifname} scope link"), e)
        })?;

    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .build();
    h.route()
        .add(default)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            NetdevError::netlink(
                format!("adding default route via {gateway} dev {ifname}"),
                e,
            )
        })?;

    h.neighbours()
        .add(index, IpAddr::V4(gateway))
        .link_layer_address(&host_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            NetdevError::netlink(
                format!("adding permanent neighbour {gateway} on {ifname}"),
                e,
            )
        })?;

    Ok((index, mac))
}

/// Turns IPv6 off on `ifname` (in the calling thread's namespace). The guarantee that no
/// IPv6 bypasses policy is the BPF datapath, which drops every non-IPv4, non-ARP frame
/// (unsupported-l3); this keeps the interfaces from emitting IPv6 in the first place.
/// A kernel without IPv6 (no net/ipv6 sysctls) has nothing to turn off. Where IPv6
/// exists, a failed write fails the endpoint add: it means the sysctl tree is not what
/// the agent expects (read-only /proc/sys, a vanished link), which an operator must see.
fn disable_ipv6(ifname: &str) -> Result<(), NetdevError> {
    if !std::path::Path::new("/proc/sys/net/ipv6/conf").exists() {
        tracing::debug!(link = ifname, "no IPv6 in this kernel; nothing to disable");
        return Ok(());
    }
    let path = format!("net/ipv6/conf/{ifname}/disable_ipv6");
    super::set_sysctl(&path, "1").map_err(|e| {
        NetdevError::io(
            format!("disabling IPv6 on {ifname} (the datapath is IPv4 only; check that /proc/sys is writable)"),
            std::io::Error::other(e.to_string()),
        )
    })
}

/// Whether `ifname` exists in the namespace; also proves the path is a network namespace.
async fn container_name_taken(netns: &Path, ifname: &str) -> Result<bool, NetdevError> {
    let name = ifname.to_string();
    in_netns(netns, move |h| async move {
        Ok(get_link(&h, &name).await?.is_some())
    })
    .await
}

/// `(ifindex, mac, IPv4 addresses)` of `ifname` inside the namespace at `netns_path`, or
/// `None` if there is no such interface (CNI CHECK, restart reconciliation).
pub async fn container_link(
    netns_path: &Path,
    ifname: &str,
) -> Result<Option<(u32, [u8; 6], Vec<Ipv4Net>)>, NetdevError> {
    let name = ifname.to_string();
    in_netns(netns_path, move |h| async move {
        let Some(link) = get_link(&h, &name).await? else {
            return Ok(None);
        };
        let index = link.header.index;
        let msgs: Vec<_> = h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetdevError::netlink(format!("listing addresses of {name:?}"), e))?;
        let mut addrs = Vec::new();
        for m in msgs
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet && m.header.index == index)
        {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS differs from it only
            // on point-to-point links.
            let ip = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
                .or_else(|| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    })
                });
            if let Some(ip) = ip {
                if let Ok(net) = Ipv4Net::new(ip, m.header.prefix_len) {
                    addrs.push(net);
                }
            }
        }
        Ok(Some((index, mac_of(&link), addrs)))
    })
    .await
}

/// Test-only fault injection: a failure after the pair exists and the container side is
/// configured, to prove the rollback. Keyed by host ifname so parallel tests do not mix.
#[cfg(test)]
pub(crate) mod fault {
    use std::collections::HashSet;
    use std::sync::Mutex;

    static FAIL: Mutex<Option<HashSet<String>>> = Mutex::new(None);

    pub(crate) fn inject(host_ifname: &str) {
        let mut g = FAIL.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert_with(HashSet::new)
            .insert(host_ifname.to_string());
    }

    pub(crate) fn take(host_ifname: &str) -> bool {
        let mut g = FAIL.lock().unwrap_or_else(|p| p.into_inner());
        g.as_mut().is_some_and(|s| s.remove(host_ifname))
    }
}
