//! The CNI result from the agent's answer, its merge with a chain's prevResult, and CHECK's
//! comparison against prevResult. Pure.

use std::net::IpAddr;

use ipnet::IpNet;
use membrane_proto::v1 as pb;

use super::error::{CniError, ErrorCode};
use super::spec::{CniResult, Dns, Interface, IpConfig, Route};

/// Builds the result of our endpoint from AddEndpoint's (or CheckEndpoint's) answer.
/// `netns`/`ifname` are the request's, used when the agent leaves interfaces out.
pub fn from_agent(
    resp: &pb::AddEndpointResponse,
    netns: &str,
    ifname: &str,
) -> Result<CniResult, CniError> {
    let mut interfaces: Vec<Interface> = resp
        .interfaces
        .iter()
        .map(|i| Interface {
            name: i.name.clone(),
            mac: i.mac.clone(),
            sandbox: i.sandbox.clone(),
            ..Default::default()
        })
        .collect();
    if interfaces.is_empty() {
        // An agent that only fills `endpoint`: host side then container side, per the proto.
        if let Some(ep) = &resp.endpoint {
            if !ep.host_ifname.is_empty() {
                interfaces.push(Interface {
                    name: ep.host_ifname.clone(),
                    ..Default::default()
                });
            }
            interfaces.push(Interface {
                name: if ep.ifname.is_empty() {
                    ifname.into()
                } else {
                    ep.ifname.clone()
                },
                mac: ep.mac.clone(),
                sandbox: netns.into(),
                ..Default::default()
            });
        }
    }
    // The container side is the one with a sandbox; ips without a valid index point there.
    let container_index = interfaces
        .iter()
        .position(|i| !i.sandbox.is_empty())
        .map(|i| i as u32);

    let mut ips = Vec::new();
    for ip in &resp.ips {
        let address = normalise_address(&ip.address)?;
        if !ip.gateway.is_empty() && ip.gateway.parse::<IpAddr>().is_err() {
            return Err(bad_answer(format!("gateway {:?}", ip.gateway)));
        }
        let interface = if (ip.interface as usize) < interfaces.len() {
            Some(ip.interface)
        } else {
            container_index
        };
        ips.push(IpConfig {
            address,
            gateway: (!ip.gateway.is_empty()).then(|| ip.gateway.clone()),
            interface,
            ..Default::default()
        });
    }
    if ips.is_empty() {
        return Err(bad_answer("no address".into()));
    }
    let routes = resp
        .routes
        .iter()
        .map(|r| Route {
            dst: r.dst.clone(),
            gw: (!r.gw.is_empty()).then(|| r.gw.clone()),
            ..Default::default()
        })
        .collect();
    Ok(CniResult {
        cni_version: String::new(),
        interfaces,
        ips,
        routes,
        dns: Dns::default(),
        extra: Default::default(),
    })
}

/// Our result appended to a chain's previous result, as the spec wants from a plugin that
/// is not first: the previous entries stay, our ip indices shift past its interfaces.
pub fn merge_prev(prev: Option<CniResult>, ours: CniResult, conf_dns: Dns) -> CniResult {
    let Some(mut out) = prev else {
        return CniResult {
            dns: conf_dns,
            ..ours
        };
    };
    let shift = out.interfaces.len() as u32;
    out.interfaces.extend(ours.interfaces);
    out.ips.extend(ours.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i + shift);
        ip
    }));
    out.routes.extend(ours.routes);
    if out.dns == Dns::default() {
        out.dns = conf_dns;
    }
    out
}

/// CHECK: everything the agent says our endpoint has must be in prevResult, as ADD returned
/// it. Differences are code 102, listed so the operator sees what drifted.
pub fn check_against_prev(prev: &CniResult, actual: &CniResult) -> Result<(), CniError> {
    let mut diffs = Vec::new();
    for want in actual.interfaces.iter().filter(|i| !i.sandbox.is_empty()) {
        match prev
            .interfaces
            .iter()
            .find(|p| p.name == want.name && p.sandbox == want.sandbox)
        {
            None => diffs.push(format!(
                "interface {} in {} is not in prevResult",
                want.name, want.sandbox
            )),
            Some(p)
                if !p.mac.is_empty()
                    && !want.mac.is_empty()
                    && !p.mac.eq_ignore_ascii_case(&want.mac) =>
            {
                diffs.push(format!(
                    "interface {} has MAC {}, prevResult says {}",
                    want.name, want.mac, p.mac
                ))
            }
            Some(_) => {}
        }
    }
    let prev_addrs: Vec<Option<IpNet>> = prev.ips.iter().map(|i| i.address.parse().ok()).collect();
    for ip in &actual.ips {
        let addr: Option<IpNet> = ip.address.parse().ok();
        if !prev_addrs.contains(&addr) {
            diffs.push(format!("address {} is not in prevResult", ip.address));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::CheckMismatch,
            format!(
                "the endpoint differs from what ADD returned: {}; delete and re-add the container",
                diffs.join("; ")
            ),
        ))
    }
}

/// "10.0.0.5" -> "10.0.0.5/32": the spec wants CIDR notation.
fn normalise_address(a: &str) -> Result<String, CniError> {
    if let Ok(net) = a.parse::<IpNet>() {
        return Ok(net.to_string());
    }
    match a.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip).to_string()),
        Err(_) => Err(bad_answer(format!("address {a:?}"))),
    }
}

fn bad_answer(what: String) -> CniError {
    CniError::new(
        ErrorCode::AgentFailure,
        format!(
            "the membrane agent answered with {what}; upgrade membrane-cni and the agent to the \
             same release"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response() -> pb::AddEndpointResponse {
        pb::AddEndpointResponse {
            endpoint: None,
            interfaces: vec![
                pb::EndpointInterface {
                    name: "mb1a2b3c4d5e".into(),
                    mac: "02:00:00:00:00:01".into(),
                    sandbox: String::new(),
                },
                pb::EndpointInterface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:02".into(),
                    sandbox: "/run/netns/x".into(),
                },
            ],
            ips: vec![pb::EndpointIp {
                address: "10.128.0.5/32".into(),
                gateway: "10.128.0.1".into(),
                interface: 1,
            }],
            routes: vec![pb::EndpointRoute {
                dst: "0.0.0.0/0".into(),
                gw: "10.128.0.1".into(),
            }],
            mtu: 1450,
        }
    }

    #[test]
    fn add_result_has_the_1_0_0_shape() {
        let r = from_agent(&response(), "/run/netns/x", "eth0").unwrap();
        let r = merge_prev(None, r, Dns::default()).in_version("1.0.0");
        let got: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(
            got,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "mb1a2b3c4d5e", "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/x"}
                ],
                "ips": [{"address": "10.128.0.5/32", "gateway": "10.128.0.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.128.0.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn old_versions_get_ip_version_and_conf_dns() {
        let r = from_agent(&response(), "/run/netns/x", "eth0").unwrap();
        let dns = Dns {
            nameservers: vec!["10.0.0.10".into()],
            ..Default::default()
        };
        let got: serde_json::Value =
            serde_json::from_str(&merge_prev(None, r, dns).in_version("0.3.1").to_json()).unwrap();
        assert_eq!(got["cniVersion"], "0.3.1");
        assert_eq!(got["ips"][0]["version"], "4");
        assert_eq!(got["dns"], json!({"nameservers": ["10.0.0.10"]}));
    }

    #[test]
    fn bare_addresses_and_missing_interfaces_are_filled_in() {
        let mut resp = response();
        resp.interfaces.clear();
        resp.ips[0].address = "10.128.0.5".into();
        resp.ips[0].interface = 7;
        resp.endpoint = Some(pb::EndpointDetail {
            host_ifname: "mbffff".into(),
            ifname: "eth0".into(),
            mac: "02:00:00:00:00:02".into(),
            ..Default::default()
        });
        let r = from_agent(&resp, "/run/netns/x", "eth0").unwrap();
        assert_eq!(r.ips[0].address, "10.128.0.5/32");
        assert_eq!(r.ips[0].interface, Some(1));
        assert_eq!(r.interfaces[1].sandbox, "/run/netns/x");
    }

    #[test]
    fn a_garbled_agent_answer_is_code_103() {
        let mut resp = response();
        resp.ips[0].address = "ten".into();
        assert_eq!(
            from_agent(&resp, "/n", "eth0").unwrap_err().code,
            ErrorCode::AgentFailure
        );
        resp.ips.clear();
        assert_eq!(
            from_agent(&resp, "/n", "eth0").unwrap_err().code,
            ErrorCode::AgentFailure
        );
    }

    #[test]
    fn a_chained_result_is_kept_and_indices_shift() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let ours = from_agent(&response(), "/run/netns/x", "eth0").unwrap();
        let r = merge_prev(Some(prev), ours, Dns::default());
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.ips[0].interface, Some(2));
    }

    #[test]
    fn check_compares_with_prev_result() {
        let actual = from_agent(&response(), "/run/netns/x", "eth0").unwrap();
        let prev = merge_prev(None, actual.clone(), Dns::default()).in_version("1.0.0");
        assert!(check_against_prev(&prev, &actual).is_ok());

        let mut moved = actual.clone();
        moved.ips[0].address = "10.128.0.9/32".into();
        moved.interfaces[1].mac = "02:00:00:00:00:99".into();
        let e = check_against_prev(&prev, &moved).unwrap_err();
        assert_eq!(e.code, ErrorCode::CheckMismatch);
        assert!(
            e.msg.contains("10.128.0.9/32") && e.msg.contains("MAC"),
            "{}",
            e.msg
        );
    }
}
