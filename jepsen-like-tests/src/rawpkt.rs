//! Crafted packets sent from inside a namespace: an AF_PACKET socket bound to one
//! interface, and builders for the frames the datapath tests need (IPv4/UDP, IPv6,
//! VLAN-tagged, VXLAN payloads). For checking what the datapath drops, not for traffic.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::netns::in_netns;

/// EtherTypes used here.
pub const ETH_P_IP: u16 = 0x0800;
/// IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ) service tag.
pub const ETH_P_8021AD: u16 = 0x88a8;

/// An AF_PACKET socket bound to `ifname` inside namespace `netns`.
pub struct RawSocket {
    fd: OwnedFd,
}

impl RawSocket {
    /// Opens and binds the socket (needs CAP_NET_RAW in that namespace: root).
    pub fn open(netns: &str, ifname: &str) -> anyhow::Result<RawSocket> {
        let name = ifname.to_string();
        let fd = in_netns(netns, move || -> anyhow::Result<OwnedFd> {
            let cname = std::ffi::CString::new(name.clone())?;
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2)/if_nametoindex(3)/bind(2) calls with a zeroed,
            // filled sockaddr_ll; the fd is owned at once.
            unsafe {
                let index = libc::if_nametoindex(cname.as_ptr());
                if index == 0 {
                    bail!("no interface {name}: {}", std::io::Error::last_os_error());
                }
                let raw = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
                if raw < 0 {
                    bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
                }
                let fd = OwnedFd::from_raw_fd(raw);
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = index as i32;
                let rc = libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if rc != 0 {
                    bail!("bind to {name}: {}", std::io::Error::last_os_error());
                }
                Ok(fd)
            }
        })??;
        Ok(RawSocket { fd })
    }

    /// Sends one frame as it is. A frame that a tc egress program drops on this very
    /// interface fails with ENOBUFS; this returns that as an error too.
    pub fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        // SAFETY: frame is valid for frame.len() bytes; the fd is a bound packet socket.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n != frame.len() as isize {
            bail!("sending a raw frame: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// An Ethernet frame: dst, src, EtherType, payload.
pub fn eth_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A VLAN-tagged Ethernet frame (`tpid` 0x8100 or 0x88a8, VLAN `vid`) around `payload`
/// of EtherType `inner`.
pub fn vlan_frame(
    dst: [u8; 6],
    src: [u8; 6],
    tpid: u16,
    vid: u16,
    inner: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut tagged = Vec::with_capacity(4 + payload.len());
    tagged.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    tagged.extend_from_slice(&inner.to_be_bytes());
    tagged.extend_from_slice(payload);
    eth_frame(dst, src, tpid, &tagged)
}

/// An IPv4/UDP packet (header checksum set, UDP checksum 0 = none), TTL 64.
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// A minimal IPv6/UDP packet between two link-local addresses.
pub fn ipv6_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(&4000u16.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// A VXLAN payload (the UDP payload to port 8472): header with VNI `vni`, then the inner
/// Ethernet frame.
pub fn vxlan_payload(vni: u32, inner_frame: &[u8]) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&(vni << 8).to_be_bytes());
    p.extend_from_slice(inner_frame);
    p
}

/// The Internet checksum of a header whose checksum field is 0.
pub fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The MAC address of `ifname` in `netns` (from `ip -j link`).
pub fn mac_of(netns: &str, ifname: &str) -> anyhow::Result<[u8; 6]> {
    let out = crate::netns::ip_in(netns, &["-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j link")?;
    let mac = v[0]["address"]
        .as_str()
        .with_context(|| format!("{ifname} in {netns} has no MAC: {out}"))?;
    parse_mac(mac)
}

/// A UDP socket bound in `netns`: the listener that must (or must not) see a datagram.
pub fn udp_listen(netns: &str, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let s = in_netns(netns, move || UdpSocket::bind(addr))?
        .with_context(|| format!("cannot bind UDP {addr} in {netns}"))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(s)
}

/// The payloads of every datagram arriving on `s` within `within`.
pub fn received(s: &UdpSocket, within: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            out.push(buf[..n].to_vec());
        }
    }
    out
}

/// Sends one UDP datagram from `from` (bound in `netns`) to `to`.
pub fn udp_send(
    netns: &str,
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
) -> anyhow::Result<()> {
    let payload = payload.to_vec();
    in_netns(netns, move || -> anyhow::Result<()> {
        let s = UdpSocket::bind(from).with_context(|| format!("cannot bind UDP {from}"))?;
        s.send_to(&payload, to)
            .with_context(|| format!("cannot send UDP {from} -> {to}"))?;
        Ok(())
    })?
}

/// The MAC that `ifname` in `netns` has for its neighbour `ip` (an endpoint's permanent
/// gateway entry gives the host side's MAC).
pub fn neighbour_mac(netns: &str, ifname: &str, ip: Ipv4Addr) -> anyhow::Result<[u8; 6]> {
    let out = crate::netns::ip_in(netns, &["-j", "neigh", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j neigh")?;
    let ip = ip.to_string();
    let mac = v
        .as_array()
        .and_then(|a| a.iter().find(|n| n["dst"] == ip.as_str()))
        .and_then(|n| n["lladdr"].as_str())
        .with_context(|| format!("no neighbour {ip} on {ifname} in {netns}: {out}"))?;
    parse_mac(mac)
}

fn parse_mac(mac: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {mac}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {mac}"))
}
