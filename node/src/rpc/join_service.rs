//! The `Join` RPC: admits a node that proves a join token, and issues its certificate.
//!
//! Order matters for "a refused join changes nothing and costs little":
//! 1. the source address is rate-limited: after a few failures it is refused at once;
//! 2. everything that needs no registry is checked (token shape, name, address, key sizes,
//!    the CSR's signature), and the advertised IP must be the one the join comes from
//!    (unless `--join-allow-any-addr`);
//! 3. `precheck_admission` runs on this node's registry copy (constant-time hash compare):
//!    a wrong token never becomes a Raft log entry;
//! 4. the certificate is signed for the id the precheck returned, and one
//!    `AdmitSignedNode` records node, certificate and token use together; if another join
//!    took that id first, sign again for the next one. A failure before the commit spends
//!    nothing.
//!
//! A node without the CA key forwards the join to a voter over mutual TLS, with the
//! original source address in [`SOURCE_HEADER`]; a voter trusts that header only from a
//! current member's certificate. The new node enters the Raft membership later, through the
//! leader's membership reconciler, once it runs its server with that certificate.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use membrane_consensus::registry::{CertRecord, NewNode, Sha256, X25519Public};
use membrane_consensus::{Command, RegistryError, Response as RegistryResponse};
use membrane_crypto::ca::ClusterCa;
use membrane_crypto::token::JoinToken;
use membrane_proto::v1::join_client::JoinClient;
use membrane_proto::v1::join_server::Join;
use membrane_proto::v1::{JoinRequest, JoinResponse};
use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};

use crate::registry::client::{ClientError, RegistryClient};
use crate::rpc::ca_source::{CaError, CaSource};
use crate::rpc::rate_limit::{FailureLimiter, Limits};
use crate::transport::NodeTls;

/// Metadata a member sets when it forwards a join: the joining node's source IP.
pub const SOURCE_HEADER: &str = "x-membrane-join-source";

/// Attempts at `AdmitSignedNode` when concurrent joins take the id first.
const ADMIT_ATTEMPTS: usize = 4;

/// How this node admits others.
#[derive(Clone, Copy, Debug, Default)]
pub struct JoinPolicy {
    /// Admit a node whose advertised IP is not the address its join came from (NAT).
    pub allow_any_addr: bool,
    /// Failed joins per source address.
    pub limits: Limits,
}

/// Why a join was refused, as `membrane_join_refused_total{reason}` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    RateLimited,
    Malformed,
    Token,
    Address,
    Other,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::RateLimited,
        Refusal::Malformed,
        Refusal::Token,
        Refusal::Address,
        Refusal::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::RateLimited => "rate_limited",
            Refusal::Malformed => "malformed",
            Refusal::Token => "token",
            Refusal::Address => "address",
            Refusal::Other => "other",
        }
    }
}

/// Refused joins by reason, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct JoinCounters {
    refused: [AtomicU64; 5],
}

impl JoinCounters {
    fn count(&self, r: Refusal) {
        self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `(reason, count)` for every reason.
    pub fn refused(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str(),
                    self.refused[*r as usize].load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// A refusal: what the caller is told, and how it is counted.
struct Refused {
    status: Status,
    why: Refusal,
}

impl Refused {
    fn new(why: Refusal, status: Status) -> Self {
        Refused { status, why }
    }
    fn malformed(msg: impl Into<String>) -> Self {
        Refused::new(Refusal::Malformed, Status::invalid_argument(msg))
    }
    fn other(status: Status) -> Self {
        Refused::new(Refusal::Other, status)
    }
}

pub struct JoinService {
    pub client: Arc<RegistryClient>,
    pub ca: Arc<dyn CaSource>,
    /// This node's TLS identity, to forward joins to a voter when it has no CA.
    pub tls: NodeTls,
    pub policy: JoinPolicy,
    pub counters: Arc<JoinCounters>,
    limiter: Mutex<FailureLimiter>,
}

impl JoinService {
    pub fn new(
        client: Arc<RegistryClient>,
        ca: Arc<dyn CaSource>,
        tls: NodeTls,
        policy: JoinPolicy,
        counters: Arc<JoinCounters>,
    ) -> Self {
        JoinService {
            client,
            ca,
            tls,
            policy,
            counters,
            limiter: Mutex::new(FailureLimiter::new(policy.limits)),
        }
    }
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let peer = req.remote_addr();
        let source = match self.source_ip(&req) {
            Ok(s) => s,
            Err(r) => return Err(self.refuse(peer, None, r)),
        };
        if let Some(ip) = source {
            let check = self.limiter().check(ip, Instant::now());
            if let Err(wait) = check {
                return Err(self.refuse(
                    peer,
                    None,
                    Refused::new(
                        Refusal::RateLimited,
                        Status::resource_exhausted(format!(
                            "too many failed joins from {ip}; wait {}s and check the token",
                            wait.as_secs().max(1)
                        )),
                    ),
                ));
            }
        }
        let forward = source.map(|ip| ip.to_string());
        match self.admit(req.into_inner(), source, forward).await {
            Ok(r) => {
                info!(
                    ?peer,
                    ?source,
                    node_id = r.get_ref().node_id,
                    "node admitted"
                );
                Ok(r)
            }
            Err(r) => {
                // Only refusals of the request count against its source: a node that is
                // still catching up must not lock out honest joiners.
                let counts = matches!(
                    r.status.code(),
                    Code::InvalidArgument | Code::PermissionDenied
                );
                if let (Some(ip), true) = (source, counts) {
                    self.limiter().record_failure(ip, Instant::now());
                }
                Err(self.refuse(peer, source, r))
            }
        }
    }
}

impl JoinService {
    fn limiter(&self) -> std::sync::MutexGuard<'_, FailureLimiter> {
        // The limiter holds plain counters: a panic elsewhere cannot leave it inconsistent.
        self.limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refuse(&self, peer: Option<SocketAddr>, source: Option<IpAddr>, r: Refused) -> Status {
        self.counters.count(r.why);
        warn!(
            ?peer,
            ?source,
            why = r.why.as_str(),
            reason = r.status.message(),
            "join refused"
        );
        r.status
    }

    /// The joining node's IP: the TCP peer's, or, when a current member forwarded the join,
    /// the one it names in [`SOURCE_HEADER`].
    fn source_ip<T>(&self, req: &Request<T>) -> Result<Option<IpAddr>, Refused> {
        let direct = req.remote_addr().map(|a| a.ip().to_canonical());
        let Some(claimed) = req.metadata().get(SOURCE_HEADER) else {
            return Ok(direct);
        };
        let member = req
            .peer_certs()
            .and_then(|c| c.first().map(|c| c.as_ref().to_vec()))
            .and_then(|der| self.member_of(&der));
        if member.is_none() {
            return Err(Refused::new(
                Refusal::Other,
                Status::permission_denied(format!(
                    "{SOURCE_HEADER} is only accepted from a current member of the cluster"
                )),
            ));
        }
        claimed
            .to_str()
            .ok()
            .and_then(|s| s.parse::<IpAddr>().ok())
            .map(|ip| Some(ip.to_canonical()))
            .ok_or_else(|| Refused::malformed(format!("{SOURCE_HEADER} is not an IP address")))
    }

    /// The current node whose certificate this is (already verified against the CA by TLS).
    fn member_of(&self, der: &[u8]) -> Option<u64> {
        let id = membrane_crypto::ca::node_id_from_cert_der(der)?;
        let key: Sha256 = membrane_crypto::cert_info::cert_public_key_sha256(der)
            .ok()?
            .parse()
            .ok()?;
        self.client
            .local(|r| r.authorize_peer(id, &key).map(|n| n.id).ok())
    }

    async fn admit(
        &self,
        req: JoinRequest,
        source: Option<IpAddr>,
        forward_source: Option<String>,
    ) -> Result<Response<JoinResponse>, Refused> {
        let token = JoinToken::parse(&req.token)
            .map_err(|e| Refused::malformed(format!("malformed join token: {e}")))?;
        let name = req.name.trim().to_string();
        if name.is_empty()
            || name.len() > 63
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(Refused::malformed(format!(
                "node name {name:?} is invalid; use 1-63 letters, digits, '-' or '.'"
            )));
        }
        // The edge: what the record holds is typed from here on.
        let rpc_addr: SocketAddr = req.rpc_addr.parse().map_err(|_| {
            Refused::malformed(format!(
                "rpc address {:?} is not ip:port; pass --advertise-addr",
                req.rpc_addr
            ))
        })?;
        check_advertised_ip(rpc_addr, source, self.policy.allow_any_addr)
            .map_err(|msg| Refused::new(Refusal::Address, Status::invalid_argument(msg)))?;
        let x25519 = X25519Public::try_from(req.x25519_public.as_slice())
            .map_err(|_| Refused::malformed("the X25519 public key must be 32 bytes"))?;
        let tls_key_sha256: Sha256 = membrane_crypto::ca::csr_public_key_sha256(&req.csr_der)
            .map_err(|e| Refused::malformed(format!("bad certificate signing request: {e}")))?
            .parse()
            .map_err(|e| Refused::other(Status::internal(format!("digest of the CSR key: {e}"))))?;
        let presented_hash: Sha256 = token.secret_hash().parse().map_err(|e| {
            Refused::other(Status::internal(format!("digest of the join token: {e}")))
        })?;
        let node = NewNode {
            name,
            rpc_addr,
            tls_key_sha256,
            x25519_public: x25519,
        };

        // Checked on this node's copy before anything is proposed.
        let now = crate::clock::unix_now();
        let mut node_id = self
            .client
            .local(|r| r.precheck_admission(token.id(), &presented_hash, &node, now))
            .map_err(registry_refusal)?;

        let ca = match self.ca.ca() {
            Ok(Some(ca)) => ca,
            Ok(None) => return self.forward_to_voter(req, forward_source).await,
            Err(e @ CaError::NotCaughtUp) => {
                return Err(Refused::other(Status::unavailable(e.to_string())))
            }
            Err(e) => return Err(Refused::other(Status::internal(e.to_string()))),
        };

        let mut attempt = 0;
        let (record, cert_pem) = loop {
            attempt += 1;
            let (cert_pem, cert) = sign(&ca, &req.csr_der, node_id)?;
            let cmd = Command::AdmitSignedNode {
                token_id: token.id().to_string(),
                presented_hash,
                node: node.clone(),
                node_id,
                cert,
                now,
            };
            match self.client.write(cmd).await {
                Ok(RegistryResponse::Node(record)) => break (record, cert_pem),
                Ok(other) => {
                    return Err(Refused::other(Status::internal(format!(
                        "unexpected registry response {other:?}"
                    ))))
                }
                // Another join took the id between our precheck and the commit.
                Err(ClientError::Refused(RegistryError::NodeIdTaken { next, .. }))
                    if attempt < ADMIT_ATTEMPTS =>
                {
                    node_id = next;
                }
                Err(ClientError::Refused(e)) => return Err(registry_refusal(e)),
                Err(e) => return Err(Refused::other(e.into())),
            }
        };
        let config = self.client.local(|r| r.cluster().cloned()).ok_or_else(|| {
            Refused::other(Status::unavailable(
                "this node has not caught up with the cluster yet; try again",
            ))
        })?;
        // What the new node must trust: during a CA rotation, both CAs of the phase.
        let ca_bundle = self
            .client
            .local(|r| crate::ca::bundle::join(&r.trusted_ca_pems()));
        let (members, member_tls_key_sha256) = self.client.local(|r| {
            let members = r.nodes().map(|n| (n.id, n.rpc_addr.to_string())).collect();
            // The new node's join-time trust (crate::authz::join_trust).
            let keys = r
                .nodes()
                .map(|n| (n.id, n.tls_key_sha256.to_string()))
                .collect();
            (members, keys)
        });
        Ok(Response::new(JoinResponse {
            node_id: record.id,
            cluster_id: u32::from(config.cluster_id),
            cluster_name: config.name,
            ca_cert_pem: ca_bundle,
            node_cert_pem: cert_pem,
            pod_cidr: record.pod_cidr.to_string(),
            members,
            member_tls_key_sha256,
        }))
    }

    /// Hands the join to a voter that holds the CA, saying where it came from. The voter
    /// checks everything again itself.
    async fn forward_to_voter(
        &self,
        req: JoinRequest,
        source: Option<String>,
    ) -> Result<Response<JoinResponse>, Refused> {
        let (voters, _) = self.client.membership();
        let me = self.client.raft().metrics().borrow().id;
        let addrs: Vec<(u64, String)> = self.client.local(|r| {
            voters
                .iter()
                .filter(|id| **id != me)
                .filter_map(|id| r.node(*id).map(|n| (n.id, n.rpc_addr.to_string())))
                .collect()
        });
        let mut last = Status::unavailable("no voter is known to forward the join to; try again");
        for (voter, addr) in addrs {
            let channel = match self.tls.channel(&addr, voter) {
                Ok(c) => c,
                Err(e) => {
                    last = Status::unavailable(format!("voter {addr}: {e}"));
                    continue;
                }
            };
            let mut fwd = Request::new(req.clone());
            if let Some(src) = &source {
                if let Ok(v) = src.parse() {
                    fwd.metadata_mut().insert(SOURCE_HEADER, v);
                }
            }
            match JoinClient::new(channel).join(fwd).await {
                Ok(resp) => return Ok(resp),
                Err(s) if s.code() == Code::Unavailable => last = s,
                // The voter's refusal is the answer; it already counted it.
                Err(s) => {
                    let why = match s.code() {
                        Code::PermissionDenied => Refusal::Token,
                        Code::InvalidArgument => Refusal::Malformed,
                        Code::ResourceExhausted => Refusal::RateLimited,
                        _ => Refusal::Other,
                    };
                    return Err(Refused::new(why, s));
                }
            }
        }
        Err(Refused::other(last))
    }
}

/// Signs the CSR for `node_id` and reads back what the registry records of it.
fn sign(ca: &ClusterCa, csr_der: &[u8], node_id: u64) -> Result<(String, CertRecord), Refused> {
    let internal = |what: &str, e: String| Refused::other(Status::internal(format!("{what}: {e}")));
    let pem = ca
        .sign_node_csr(csr_der, node_id)
        .map_err(|e| internal("signing the node certificate failed", e.to_string()))?;
    let info = membrane_crypto::cert_info::cert_info_from_pem(&pem)
        .map_err(|e| internal("reading the signed certificate", e.to_string()))?;
    let tls_key_sha256 =
        info.spki_sha256_hex
            .parse()
            .map_err(|e: membrane_consensus::registry::KeyError| {
                internal("the certificate's key digest", e.to_string())
            })?;
    Ok((
        pem,
        CertRecord {
            serial: info.serial_hex,
            not_before: info.not_before,
            not_after: info.not_after,
            tls_key_sha256,
        },
    ))
}

/// The advertised IP must be the one the join comes from: otherwise a token holder could
/// make every node send pod traffic to an address of its choosing. NAT needs the flag.
pub fn check_advertised_ip(
    rpc_addr: SocketAddr,
    source: Option<IpAddr>,
    allow_any: bool,
) -> Result<(), String> {
    if allow_any {
        return Ok(());
    }
    let advertised = rpc_addr.ip().to_canonical();
    match source {
        Some(src) if src.to_canonical() == advertised => Ok(()),
        Some(src) => Err(format!(
            "the advertised address {advertised} is not the address this join comes from ({src}); \
             advertise the address other nodes reach this node on (--advertise-addr), or, behind NAT, \
             start the admitting agents with --join-allow-any-addr"
        )),
        None => Err(
            "the join's source address is unknown, so the advertised address cannot be checked; \
             start the admitting agents with --join-allow-any-addr"
                .to_string(),
        ),
    }
}

/// What the caller is told about a registry refusal. The token's id and secret are judged
/// together: the caller never learns whether the id exists.
fn registry_refusal(e: RegistryError) -> Refused {
    match e {
        RegistryError::JoinRefused
        | RegistryError::TokenNotFound { .. }
        | RegistryError::TokenSecretMismatch { .. } => Refused::new(
            Refusal::Token,
            Status::permission_denied(RegistryError::JoinRefused.to_string()),
        ),
        e @ (RegistryError::TokenExpired { .. }
        | RegistryError::TokenRevoked { .. }
        | RegistryError::TokenUsedUp { .. }) => {
            Refused::new(Refusal::Token, Status::permission_denied(e.to_string()))
        }
        e @ RegistryError::InvalidRpcAddr { .. } => {
            Refused::new(Refusal::Address, Status::invalid_argument(e.to_string()))
        }
        e => Refused::other(ClientError::Refused(e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn t10_advertised_ip_must_match_the_source() {
        let a = addr("10.0.0.5:7400");
        assert!(check_advertised_ip(a, Some("10.0.0.5".parse().unwrap()), false).is_ok());
        let err = check_advertised_ip(a, Some("10.0.0.6".parse().unwrap()), false).unwrap_err();
        assert!(
            err.contains("10.0.0.6") && err.contains("--join-allow-any-addr"),
            "{err}"
        );
        assert!(check_advertised_ip(a, None, false).is_err());
    }

    #[test]
    fn t11_the_flag_allows_any_and_mapped_v4_matches() {
        let a = addr("10.0.0.5:7400");
        assert!(check_advertised_ip(a, Some("192.0.2.1".parse().unwrap()), true).is_ok());
        assert!(check_advertised_ip(a, None, true).is_ok());
        // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
        assert!(check_advertised_ip(a, Some("::ffff:10.0.0.5".parse().unwrap()), false).is_ok());
    }

    #[test]
    fn t20_unknown_id_and_wrong_secret_read_the_same() {
        let unknown = registry_refusal(RegistryError::JoinRefused);
        let wrong = registry_refusal(RegistryError::TokenSecretMismatch {
            id: "abcdef".into(),
        });
        let missing = registry_refusal(RegistryError::TokenNotFound {
            id: "abcdef".into(),
        });
        for r in [&unknown, &wrong, &missing] {
            assert_eq!(r.status.code(), Code::PermissionDenied);
            assert_eq!(r.status.message(), unknown.status.message());
            assert!(!r.status.message().contains("abcdef"));
            assert_eq!(r.why, Refusal::Token);
        }
    }

    #[test]
    fn t21_counters_count_by_reason() {
        let c = JoinCounters::default();
        c.count(Refusal::Token);
        c.count(Refusal::Token);
        c.count(Refusal::RateLimited);
        let v = c.refused();
        assert_eq!(v.len(), Refusal::ALL.len());
        assert!(v.contains(&("token", 2)));
        assert!(v.contains(&("rate_limited", 1)));
        assert!(v.contains(&("address", 0)));
    }
}
