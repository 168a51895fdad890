//! The policy document: a CiliumNetworkPolicy-shaped YAML document, as Rust types.
//!
//! Every struct refuses unknown fields, so that a typo (`matchLabel`) is an error rather
//! than a rule that silently selects more than intended. Values that can be checked on their
//! own (a CIDR, a port, a name) and groups of fields that must agree (`port`/`endPort`/
//! `protocol`, an operator and its values, a CIDR and its excepts) are checked while
//! deserialising, so that the YAML parser can say on which line the bad value is.
//!
//! Serialising gives back a stable document: maps are sorted, absent fields stay absent,
//! ports are written as strings, as Cilium writes them.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use ipnet::Ipv4Net;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest policy name, as a DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// One policy document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    /// `membrane.io/v1` or `cilium.io/v2`.
    pub api_version: ApiVersion,
    /// `NetworkPolicy` or `CiliumNetworkPolicy`.
    pub kind: Kind,
    /// The policy's name.
    pub metadata: Metadata,
    /// What the policy selects and what it allows or denies.
    pub spec: PolicySpec,
}

/// The accepted `apiVersion` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiVersion {
    /// `membrane.io/v1`.
    #[serde(rename = "membrane.io/v1")]
    MembraneV1,
    /// `cilium.io/v2`, so that CiliumNetworkPolicy files can be used as they are.
    #[serde(rename = "cilium.io/v2")]
    CiliumV2,
}

/// The accepted `kind` values; both mean the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// `NetworkPolicy`.
    NetworkPolicy,
    /// `CiliumNetworkPolicy`.
    CiliumNetworkPolicy,
}

/// `metadata`: the name, and free-form labels and annotations that Membrane keeps but
/// does not interpret (so that `kubectl`-exported files load).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// A DNS label: 1-63 characters, lower-case letters, digits and '-', starting and
    /// ending with a letter or digit. Unique within a file.
    #[serde(deserialize_with = "deserialize_name")]
    pub name: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `spec`: which endpoints the policy applies to, and its four rule lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// Free-form text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The local endpoints this policy applies to; `{}` selects every endpoint.
    pub endpoint_selector: EndpointSelector,
    /// What may reach the selected endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    /// What the selected endpoints may reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    /// What may never reach the selected endpoints, whatever else allows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_deny: Vec<IngressRule>,
    /// What the selected endpoints may never reach, whatever else allows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<EgressRule>,
}

/// A label selector, as in Kubernetes: every `matchLabels` pair and every
/// `matchExpressions` entry must hold. The empty selector `{}` matches every endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSelector {
    /// `key: value` pairs that must all be present.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "deserialize_match_labels"
    )]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<MatchExpression>,
}

/// One set-based requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchExpression {
    /// The label key.
    pub key: String,
    /// How the key's value is tested.
    pub operator: Operator,
    /// Non-empty for `In` and `NotIn`, empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operator of a [`MatchExpression`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// The key is present with one of the values.
    In,
    /// The key is absent, or present with none of the values.
    NotIn,
    /// The key is present, with any value.
    Exists,
    /// The key is absent.
    DoesNotExist,
}

/// A rule of `ingress` or `ingressDeny`: the peers it matches (union of the `from*`
/// fields) and the ports. With no `from*` field at all, the rule matches every peer on its
/// ports; with neither `from*` nor `toPorts` (`{}`) it matches nothing, which only puts the
/// endpoint into default deny.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    /// Endpoints of the cluster; `[{}]` is every endpoint of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<EndpointSelector>>,
    /// Addresses outside the cluster.
    #[serde(rename = "fromCIDR", default, skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Vec<Cidr>>,
    /// Addresses outside the cluster, with holes.
    #[serde(
        rename = "fromCIDRSet",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Named groups of peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<Entity>>,
    /// The destination ports; absent or empty means every port and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
}

/// A rule of `egress` or `egressDeny`; the `to*` counterpart of [`IngressRule`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    /// Endpoints of the cluster; `[{}]` is every endpoint of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<EndpointSelector>>,
    /// Addresses outside the cluster.
    #[serde(rename = "toCIDR", default, skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Vec<Cidr>>,
    /// Addresses outside the cluster, with holes.
    #[serde(rename = "toCIDRSet", default, skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Named groups of peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<Entity>>,
    /// The destination ports; absent or empty means every port and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
}

/// The peer and port parts of a rule, whichever its direction.
#[derive(Clone, Copy, Debug)]
pub struct RuleParts<'a> {
    /// `fromEndpoints` / `toEndpoints`.
    pub endpoints: Option<&'a [EndpointSelector]>,
    /// `fromCIDR` / `toCIDR`.
    pub cidr: Option<&'a [Cidr]>,
    /// `fromCIDRSet` / `toCIDRSet`.
    pub cidr_set: Option<&'a [CidrRule]>,
    /// `fromEntities` / `toEntities`.
    pub entities: Option<&'a [Entity]>,
    /// `toPorts`.
    pub to_ports: Option<&'a [PortRule]>,
}

impl RuleParts<'_> {
    /// True when no peer field is given: the rule is about ports only and matches every
    /// peer (or, without ports either, nothing).
    pub fn has_no_peer_field(&self) -> bool {
        self.endpoints.is_none()
            && self.cidr.is_none()
            && self.cidr_set.is_none()
            && self.entities.is_none()
    }

    /// True when `toPorts` is given and not empty.
    pub fn has_ports(&self) -> bool {
        self.to_ports.is_some_and(|p| !p.is_empty())
    }
}

impl IngressRule {
    /// The rule's parts under direction-neutral names.
    pub fn parts(&self) -> RuleParts<'_> {
        RuleParts {
            endpoints: self.from_endpoints.as_deref(),
            cidr: self.from_cidr.as_deref(),
            cidr_set: self.from_cidr_set.as_deref(),
            entities: self.from_entities.as_deref(),
            to_ports: self.to_ports.as_deref(),
        }
    }
}

impl EgressRule {
    /// The rule's parts under direction-neutral names.
    pub fn parts(&self) -> RuleParts<'_> {
        RuleParts {
            endpoints: self.to_endpoints.as_deref(),
            cidr: self.to_cidr.as_deref(),
            cidr_set: self.to_cidr_set.as_deref(),
            entities: self.to_entities.as_deref(),
            to_ports: self.to_ports.as_deref(),
        }
    }
}

/// An IPv4 network written `a.b.c.d/len`, with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(pub Ipv4Net);

/// A CIDR with holes: `{cidr, except: [...]}`; every except lies inside `cidr`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CidrRule {
    /// The network.
    pub cidr: Cidr,
    /// Networks inside `cidr` that the rule does not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Cidr>,
}

/// A named group of peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// This node (reserved identity 1).
    Host,
    /// Everything outside the cluster: identity 2 and every CIDR identity.
    World,
    /// Every endpoint of the cluster, this host and the other nodes.
    Cluster,
    /// Every peer whatsoever (the wildcard identity 0).
    All,
    /// The other nodes of the cluster (reserved identity 6).
    RemoteNode,
}

/// One `toPorts` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRule {
    /// The ports; absent or empty means every port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortProtocol>,
}

/// A port or port range and a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortProtocol {
    /// The first port (1-65535); `None` means every port (and is the only choice for ICMP).
    pub port: Option<u16>,
    /// The last port of a range starting at `port`; at least `port`.
    pub end_port: Option<u16>,
    /// The protocol; `ANY` when not given.
    pub protocol: Protocol,
}

impl PortProtocol {
    /// The inclusive port range, `0..=65535` when no port is given.
    pub fn range(&self) -> (u16, u16) {
        match self.port {
            None => (0, u16::MAX),
            Some(p) => (p, self.end_port.unwrap_or(p)),
        }
    }
}

/// A transport protocol of a port rule.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Protocol {
    /// TCP (IANA 6).
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP (IANA 17).
    #[serde(rename = "UDP")]
    Udp,
    /// ICMP (IANA 1); has no ports.
    #[serde(rename = "ICMP")]
    Icmp,
    /// Every protocol: TCP, UDP and ICMP on the given ports (ICMP only when no port is given).
    #[default]
    #[serde(rename = "ANY")]
    Any,
}

impl Protocol {
    /// The IANA protocol number; 0 for `ANY`.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
            Protocol::Any => 0,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validation while deserialising.
//
// A check that needs several fields runs inside the visitor of the enclosing map, so that
// the YAML parser attaches the map's line and field path to the error.

/// Deserialises `Raw` from a map and converts it with `check`, inside the map's visitor.
struct Checked<Raw, T> {
    what: &'static str,
    check: fn(Raw) -> Result<T, String>,
    _raw: PhantomData<fn() -> Raw>,
}

impl<'de, Raw: Deserialize<'de>, T> Visitor<'de> for Checked<Raw, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let raw = Raw::deserialize(de::value::MapAccessDeserializer::new(map))?;
        (self.check)(raw).map_err(de::Error::custom)
    }
}

fn deserialize_checked<'de, D, Raw, T>(
    deserializer: D,
    what: &'static str,
    check: fn(Raw) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    Raw: Deserialize<'de>,
{
    deserializer.deserialize_map(Checked {
        what,
        check,
        _raw: PhantomData,
    })
}

fn deserialize_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    validate_name(&name).map_err(de::Error::custom)?;
    Ok(name)
}

/// Checks a policy name: a DNS label.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the policy name is empty; give metadata.name, e.g. allow-web".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the policy name {name:?} is longer than {MAX_NAME_LEN} characters"
        ));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !name.chars().all(ok_char) || !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err(format!(
            "the policy name {name:?} is not a DNS label: use lower-case letters, digits and \
             '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a selector's label key: non-empty, letters, digits, `-_./`, and `:` for a source
/// prefix (`k8s:app`), as label keys in the registry.
fn validate_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a label key is empty".into());
    }
    check_label_chars("key", key, true)
}

fn check_label_chars(what: &str, s: &str, is_key: bool) -> Result<(), String> {
    let allowed = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/') || (is_key && c == ':')
    };
    if s.len() > 253 {
        return Err(format!("label {what} {s:?} is longer than 253 characters"));
    }
    match s.chars().find(|c| !allowed(*c)) {
        Some(bad) => Err(format!(
            "label {what} {s:?} contains {bad:?}; use letters, digits, '-', '_', '.', '/'{}",
            if is_key {
                " and ':' for a source prefix"
            } else {
                ""
            }
        )),
        None => Ok(()),
    }
}

fn deserialize_match_labels<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let labels = BTreeMap::<String, String>::deserialize(d)?;
    for (k, v) in &labels {
        validate_label_key(k).map_err(de::Error::custom)?;
        check_label_chars("value", v, false).map_err(de::Error::custom)?;
    }
    Ok(labels)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatchExpression {
    key: String,
    operator: Operator,
    #[serde(default)]
    values: Vec<String>,
}

impl<'de> Deserialize<'de> for MatchExpression {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_checked(
            d,
            "a match expression {key, operator, values}",
            |raw: RawMatchExpression| {
                validate_label_key(&raw.key)?;
                for v in &raw.values {
                    check_label_chars("value", v, false)?;
                }
                match raw.operator {
                    Operator::In | Operator::NotIn if raw.values.is_empty() => Err(format!(
                        "operator {:?} needs at least one value in `values`",
                        raw.operator
                    )),
                    Operator::Exists | Operator::DoesNotExist if !raw.values.is_empty() => {
                        Err(format!(
                            "operator {:?} takes no `values`; remove them or use In/NotIn",
                            raw.operator
                        ))
                    }
                    _ => Ok(MatchExpression {
                        key: raw.key,
                        operator: raw.operator,
                        values: raw.values,
                    }),
                }
            },
        )
    }
}

impl Cidr {
    /// Reads `a.b.c.d/len`; host bits must be zero and the prefix length is required.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        if s.contains(':') {
            return Err(format!(
                "{s:?} is an IPv6 network; only IPv4 CIDRs are supported"
            ));
        }
        if !s.contains('/') {
            return Err(match s.parse::<std::net::Ipv4Addr>() {
                Ok(_) => format!("{s:?} has no prefix length; write {s}/32 for one address"),
                Err(_) => format!("{s:?} is not an IPv4 CIDR such as 10.0.0.0/8"),
            });
        }
        let net: Ipv4Net = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 CIDR such as 10.0.0.0/8"))?;
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has host bits set; write {} (or /32 for one address)",
                net.trunc()
            ));
        }
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IPv4 CIDR such as 10.0.0.0/8")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Cidr, E> {
                Cidr::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCidrRule {
    cidr: Cidr,
    #[serde(default)]
    except: Vec<Cidr>,
}

impl<'de> Deserialize<'de> for CidrRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_checked(d, "a CIDR set {cidr, except}", |raw: RawCidrRule| {
            for e in &raw.except {
                if !raw.cidr.0.contains(&e.0) || e.0 == raw.cidr.0 {
                    return Err(format!(
                        "except {} does not lie inside cidr {} (an except must be a smaller \
                         network within it)",
                        e, raw.cidr
                    ));
                }
            }
            Ok(CidrRule {
                cidr: raw.cidr,
                except: raw.except,
            })
        })
    }
}

/// A port as written: a number or a string holding a number.
struct PortValue(u32);

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number 1-65535 (a number or a string such as \"80\")")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortValue, E> {
                port_in_range(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortValue, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("port {v} is out of range 1-65535"))),
                }
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PortValue, E> {
                let t = s.trim();
                if t.is_empty() {
                    return Err(E::custom("the port is empty; give a number 1-65535"));
                }
                if !t.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::custom(format!(
                        "port {s:?} is not a number; named ports are not supported, give a \
                         number 1-65535"
                    )));
                }
                // All digits: an overflow of u64 is simply out of range.
                let v = t.parse::<u64>().unwrap_or(u64::MAX);
                port_in_range(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn port_in_range(v: u64) -> Result<PortValue, String> {
    match u32::try_from(v) {
        Ok(p) if (1..=65535).contains(&p) => Ok(PortValue(p)),
        _ => Err(format!("port {v} is out of range 1-65535")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPortProtocol {
    #[serde(default)]
    port: Option<PortValue>,
    #[serde(default)]
    end_port: Option<PortValue>,
    #[serde(default)]
    protocol: Protocol,
}

fn check_port_protocol(raw: RawPortProtocol) -> Result<PortProtocol, String> {
    // PortValue is 1..=65535 by construction, so the narrowing cannot fail.
    let narrow = |p: PortValue| u16::try_from(p.0).unwrap_or(u16::MAX);
    let port = raw.port.map(narrow);
    let end_port = raw.end_port.map(narrow);
    if raw.protocol == Protocol::Icmp && (port.is_some() || end_port.is_some()) {
        return Err("ICMP has no ports; remove port/endPort or use TCP/UDP".into());
    }
    match (port, end_port) {
        (None, Some(_)) => Err("endPort needs a port: the range is port..=endPort".into()),
        (Some(p), Some(e)) if e < p => Err(format!("endPort {e} is below port {p}")),
        _ => Ok(PortProtocol {
            port,
            // A range of one port is written without endPort, so that a stored policy
            // has one spelling.
            end_port: end_port.filter(|e| Some(*e) != port),
            protocol: raw.protocol,
        }),
    }
}

impl<'de> Deserialize<'de> for PortProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_checked(d, "a port {port, endPort, protocol}", check_port_protocol)
    }
}

impl Serialize for PortProtocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out {
            #[serde(skip_serializing_if = "Option::is_none")]
            port: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            end_port: Option<u16>,
            protocol: Protocol,
        }
        Out {
            port: self.port.map(|p| p.to_string()),
            end_port: self.end_port,
            protocol: self.protocol,
        }
        .serialize(s)
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Entity::Host => "host",
            Entity::World => "world",
            Entity::Cluster => "cluster",
            Entity::All => "all",
            Entity::RemoteNode => "remote-node",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert!(validate_name("allow-web-1").is_ok());
        for bad in ["", "-a", "a-", "Web", "a_b", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs_are_strict() {
        assert_eq!(
            Cidr::parse("10.0.0.0/8").map(|c| c.to_string()),
            Ok("10.0.0.0/8".into())
        );
        let cases = [
            ("10.0.0.1/8", "host bits set; write 10.0.0.0/8"),
            ("10.0.0.1", "no prefix length; write 10.0.0.1/32"),
            ("fd00::/8", "IPv6"),
            ("10.0.0.0/33", "not an IPv4 CIDR"),
            ("web", "not an IPv4 CIDR"),
        ];
        for (input, expected) in cases {
            let err = Cidr::parse(input).unwrap_err();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }

    #[test]
    fn port_range_of_absent_port_is_everything() {
        let p = PortProtocol {
            port: None,
            end_port: None,
            protocol: Protocol::Tcp,
        };
        assert_eq!(p.range(), (0, 65535));
        let p = PortProtocol {
            port: Some(80),
            end_port: Some(90),
            protocol: Protocol::Tcp,
        };
        assert_eq!(p.range(), (80, 90));
    }
}
