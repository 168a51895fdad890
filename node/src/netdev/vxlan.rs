//! The overlay device: VXLAN in external (collect_md) mode, so the BPF programs choose
//! the remote and the VNI per packet with bpf_skb_set_tunnel_key.

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVxlan};

use super::link::{connect, delete_index, get_link, kind_of, mac_of, mtu_of};
use super::{validate_ifname, NetdevError};

/// Ensures the VXLAN device `name` exists in external mode with learning off on UDP
/// `port`, is up and, when `mtu` is given, has that MTU. Returns `(ifindex, mac)`.
///
/// An existing device with that configuration is kept as it is (same ifindex), so an
/// agent restart does not interrupt traffic. A VXLAN device with another configuration
/// is replaced; a link of another kind is an error.
pub async fn ensure_vxlan(
    name: &str,
    port: u16,
    mtu: Option<u32>,
) -> Result<(u32, [u8; 6]), NetdevError> {
    validate_ifname(name)?;
    if port == 0 {
        return Err(NetdevError::Invalid {
            what: "VXLAN port",
            detail: "0".into(),
        });
    }
    let handle = connect()?;

    if let Some(link) = get_link(&handle, name).await? {
        match kind_of(&link) {
            Some(InfoKind::Vxlan) => {
                if config_matches(&link, port) {
                    let index = link.header.index;
                    let mut set = LinkUnspec::new_with_index(index).up();
                    if let Some(m) = mtu.filter(|m| *m != mtu_of(&link)) {
                        set = set.mtu(m);
                    }
                    handle
                        .link()
                        .set(set.build())
                        .execute()
                        .await
                        .map_err(|e| {
                            NetdevError::netlink(format!("setting VXLAN device {name:?} up"), e)
                        })?;
                    tracing::info!(
                        device = name,
                        ifindex = index,
                        port,
                        "keeping the existing VXLAN device"
                    );
                    return Ok((index, mac_of(&link)));
                }
                tracing::warn!(
                    device = name,
                    port,
                    "VXLAN device exists with another configuration (not external, learning \
                     on, or another port); replacing it"
                );
                delete_index(&handle, link.header.index, name).await?;
            }
            other => {
                return Err(NetdevError::NotVxlan {
                    name: name.to_string(),
                    kind: other.map_or_else(
                        || "none (a physical or loopback device)".to_string(),
                        |k| k.to_string(),
                    ),
                })
            }
        }
    }

    let mut msg = LinkMessageBuilder::<LinkVxlan>::new(name)
        .collect_metadata(true)
        .learning(false)
        .port(port)
        .up();
    if let Some(m) = mtu {
        msg = msg.mtu(m);
    }
    handle
        .link()
        .add(msg.build())
        .execute()
        .await
        .map_err(|e| {
            NetdevError::netlink(
                format!(
                    "creating VXLAN device {name:?} (external, UDP port {port}); only one \
                 external VXLAN device per port and namespace is allowed"
                ),
                e,
            )
        })?;
    let link = get_link(&handle, name).await?.ok_or_else(|| {
        NetdevError::io(
            format!("looking up the new VXLAN device {name:?}"),
            std::io::Error::other("it vanished right after creation"),
        )
    })?;
    tracing::info!(
        device = name,
        ifindex = link.header.index,
        port,
        "created the VXLAN device"
    );
    Ok((link.header.index, mac_of(&link)))
}

/// External mode, learning off and the right port.
fn config_matches(link: &LinkMessage, port: u16) -> bool {
    let Some(data) = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
            _ => None,
        }),
        _ => None,
    }) else {
        return false;
    };
    let external = data
        .iter()
        .any(|i| matches!(i, InfoVxlan::CollectMetadata(true)));
    let learning = data.iter().any(|i| matches!(i, InfoVxlan::Learning(true)));
    let right_port = data
        .iter()
        .any(|i| matches!(i, InfoVxlan::Port(p) if *p == port));
    external && !learning && right_port
}
