//! `#[repr(C)]` mirrors of the BPF side's structs and constants (docs/datapath.md, "BPF
//! maps"), one module per header of `bpf/lib/`: `endpoints` for `endpoints.h`, `ipcache`
//! for `ipcache.h` and so on. Each module's tests check its struct sizes and offsets and
//! parse its header to compare every number the two sides share.
//!
//! Addresses and ports are stored as the kernel sees them (network byte order); build
//! values with the constructors here so that no caller converts byte order by hand.

mod common;
mod config;
mod conntrack;
mod endpoints;
mod events;
mod identity;
mod ipcache;
mod metrics;
mod policy;

pub use common::{proto, Direction};
pub use config::{DatapathConfig, CONTROL_PORTS};
pub use conntrack::{ct_timeout, CtKey, CtValue};
pub use endpoints::{EndpointKey, EndpointValue};
pub use events::{EventKind, FlowEvent, FlowEventRecord, PolicyTable};
pub use identity::{
    IDENTITY_HEALTH, IDENTITY_HOST, IDENTITY_INIT, IDENTITY_REMOTE_NODE, IDENTITY_UNKNOWN,
    IDENTITY_UNMANAGED, IDENTITY_WORLD, RESERVED_IDENTITIES,
};
pub use ipcache::{IpcacheKey, IpcacheValue};
pub use metrics::{MetricValue, Reason, METRICS_PER_DIRECTION};
pub(crate) use policy::PolicyKeyData;
pub use policy::{PolicyKey, PolicyValue, Verdict, POLICY_PREFIX_EXACT};

/// Reads the C headers in tests: the values both sides must agree on are compared with
/// what the header says, not with a copy of it.
#[cfg(test)]
pub(crate) mod header {
    /// `#define NAME VALUE` lines of a header, VALUE parsed as an integer (a `(1U << n)`
    /// form too).
    pub(crate) fn defines(header: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for line in header.lines() {
            let Some(rest) = line.trim().strip_prefix("#define ") else {
                continue;
            };
            let mut parts = rest.splitn(2, char::is_whitespace);
            let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let value = value.split("/*").next().unwrap_or("").trim();
            let parsed = if let Some(shift) = value
                .strip_prefix("(1U << ")
                .and_then(|v| v.strip_suffix(')'))
            {
                shift.parse::<u32>().ok().map(|s| 1u64 << s)
            } else {
                value.trim_end_matches('U').parse().ok()
            };
            if let Some(v) = parsed {
                out.push((name.to_owned(), v));
            }
        }
        out
    }

    /// The value of `#define name`; panics when the header does not define it.
    pub(crate) fn define(header: &str, name: &str) -> u64 {
        defines(header)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not defined"))
            .1
    }
}
