//! Link lookups and deletion in the calling thread's network namespace, and the shared
//! rtnetlink helpers the other files use.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::stream::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteType};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::NetdevError;

pub(crate) const ENODEV: i32 = nix::libc::ENODEV;
pub(crate) const EEXIST: i32 = nix::libc::EEXIST;

/// Opens an rtnetlink connection in the calling thread's namespace and drives it on the
/// current tokio runtime. The connection task ends when the last handle is dropped.
pub(crate) fn connect() -> Result<Handle, NetdevError> {
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| NetdevError::io("opening an rtnetlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The link called `name`, if any.
pub(crate) async fn get_link(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, NetdevError> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(m) => Ok(m),
        // The kernel answers a by-name lookup of a missing link with ENODEV.
        Err(e) if super::error::errno_of(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(NetdevError::netlink(format!("looking up link {name:?}"), e)),
    }
}

/// The link with index `index`, if any.
pub(crate) async fn get_link_by_index(
    handle: &Handle,
    index: u32,
) -> Result<Option<LinkMessage>, NetdevError> {
    let mut links = handle.link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if super::error::errno_of(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(NetdevError::netlink(format!("looking up link #{index}"), e)),
    }
}

/// The link's MAC; all zeroes for links without a 6-byte hardware address.
pub(crate) fn mac_of(link: &LinkMessage) -> [u8; 6] {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or([0; 6])
}

pub(crate) fn mtu_of(link: &LinkMessage) -> u32 {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0)
}

/// The link's kind ("veth", "vxlan", ...), `None` for kind-less links (physical, lo).
pub(crate) fn kind_of(link: &LinkMessage) -> Option<InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

/// `(ifindex, mac, mtu)` of the link called `name` in the caller's namespace, or `None`.
pub async fn link_by_name(name: &str) -> Result<Option<(u32, [u8; 6], u32)>, NetdevError> {
    let handle = connect()?;
    Ok(get_link(&handle, name)
        .await?
        .map(|l| (l.header.index, mac_of(&l), mtu_of(&l))))
}

/// Deletes the link called `name` in the caller's namespace. `Ok(false)` if there was
/// none. Deleting one end of a veth deletes the other, wherever it is.
pub async fn delete_link(name: &str) -> Result<bool, NetdevError> {
    let handle = connect()?;
    let Some(link) = get_link(&handle, name).await? else {
        return Ok(false);
    };
    delete_index(&handle, link.header.index, name).await
}

/// Deletes by index; `Ok(false)` if it vanished meanwhile.
pub(crate) async fn delete_index(
    handle: &Handle,
    index: u32,
    name: &str,
) -> Result<bool, NetdevError> {
    match handle.link().del(index).execute().await {
        Ok(()) => {
            tracing::debug!(link = name, ifindex = index, "deleted link");
            Ok(true)
        }
        Err(e) if super::error::errno_of(&e) == Some(ENODEV) => Ok(false),
        Err(e) => Err(NetdevError::netlink(format!("deleting link {name:?}"), e)),
    }
}

/// The endpoint MTU to use when none is configured: [`underlay_mtu`] minus
/// [`super::VXLAN_OVERHEAD`] (VXLAN over IPv4).
pub async fn default_endpoint_mtu() -> Result<u32, NetdevError> {
    let under = underlay_mtu().await?;
    match under.checked_sub(super::VXLAN_OVERHEAD) {
        Some(m) if m >= 68 => Ok(m),
        _ => Err(NetdevError::Invalid {
            what: "underlay MTU",
            detail: format!("{under} leaves no room for VXLAN; pass the endpoint MTU (--mtu)"),
        }),
    }
}

/// The MTU of the interface holding the IPv4 default route of the main table or, when
/// there is none (the lab hosts have only a connected /24), of the first up,
/// non-loopback interface with an IPv4 address. The endpoint MTU defaults to this minus
/// [`super::VXLAN_OVERHEAD`].
pub async fn underlay_mtu() -> Result<u32, NetdevError> {
    let handle = connect()?;

    let routes: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetdevError::netlink("listing IPv4 routes", e))?;
    let default_oif = routes.iter().find_map(|r| {
        let main = r.header.table == RouteHeader::RT_TABLE_MAIN
            || r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Table(t) if *t == u32::from(RouteHeader::RT_TABLE_MAIN)));
        if !main || r.header.destination_prefix_length != 0 || r.header.kind != RouteType::Unicast {
            return None;
        }
        r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            RouteAttribute::MultiPath(hops) => hops.first().map(|h| h.interface_index),
            _ => None,
        })
    });
    if let Some(oif) = default_oif {
        if let Some(link) = get_link_by_index(&handle, oif).await? {
            let mtu = mtu_of(&link);
            tracing::debug!(ifindex = oif, mtu, "underlay MTU from the default route");
            return Ok(mtu);
        }
    }

    // No default route: the interfaces with an IPv4 address exclude our own devices
    // (the veth host sides and the VXLAN device have none).
    let addrs: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetdevError::netlink("listing addresses", e))?;
    let with_v4: HashSet<u32> = addrs
        .iter()
        .filter(|a| a.header.family == AddressFamily::Inet)
        .filter(|a| {
            a.attributes.iter().any(|x| {
                matches!(x, AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) if !ip.is_loopback())
            })
        })
        .map(|a| a.header.index)
        .collect();
    let mut links: Vec<_> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetdevError::netlink("listing links", e))?;
    links.sort_by_key(|l| l.header.index);
    let usable = links.iter().find(|l| {
        l.header.flags.contains(LinkFlags::Up)
            && !l.header.flags.contains(LinkFlags::Loopback)
            && with_v4.contains(&l.header.index)
    });
    match usable {
        Some(l) => {
            let mtu = mtu_of(l);
            tracing::debug!(
                ifindex = l.header.index,
                mtu,
                "underlay MTU from the first up interface"
            );
            Ok(mtu)
        }
        None => Err(NetdevError::NoUnderlay),
    }
}
