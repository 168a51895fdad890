//! CNI errors: the spec's well-known codes, ours from 100, and the mapping from the agent's
//! gRPC statuses. Every message says what was wrong and what to do, because the runtime shows
//! it to an operator (kubectl describe pod) who never sees our stderr.

use serde::Serialize;
use tonic::Code;

/// Error codes of CNI 1.0.0 (0-99 are reserved by the spec) and ours (>= 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// The network configuration's cniVersion is not one we support.
    IncompatibleVersion = 1,
    /// A field we do not support (e.g. a static IP request).
    UnsupportedField = 2,
    /// The container (its network namespace, or its endpoint) is unknown.
    UnknownContainer = 3,
    /// A required CNI_* environment variable is missing or invalid.
    InvalidEnvironment = 4,
    /// Reading stdin, writing the queue, or the socket failed.
    IoFailure = 5,
    /// stdin was not JSON.
    DecodingFailure = 6,
    /// The network configuration is missing fields or has invalid ones.
    InvalidNetworkConfig = 7,
    /// The agent is not running or not ready: the runtime should retry.
    TryAgainLater = 11,
    /// The node's pod CIDR has no free address.
    PodCidrExhausted = 100,
    /// The container id is attached with another netns, or the interface name is taken.
    AlreadyExists = 101,
    /// CHECK found the endpoint differs from what ADD set up.
    CheckMismatch = 102,
    /// The agent failed in a way the request cannot fix (internal error, bad answer).
    AgentFailure = 103,
}

impl ErrorCode {
    /// The numeric code of the CNI error JSON.
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

/// A CNI error, printed as the spec's error JSON on stdout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidEnvironment, msg)
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidNetworkConfig, msg)
    }

    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::IoFailure, msg)
    }

    /// The error JSON, in `cni_version` (the config's when it was readable and supported).
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let wire = Wire {
            cni_version,
            code: self.code.as_u32(),
            msg: &self.msg,
            details: &self.details,
        };
        // Serialising strings and integers cannot fail; the fallback keeps the contract anyway.
        serde_json::to_string(&wire).unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"1.0.0\",\"code\":{},\"msg\":\"error\"}}",
                self.code.as_u32()
            )
        })
    }

    /// Maps a status of the agent's plugin API (see plugin.proto for what each means).
    /// `what` names the call ("add", "delete", "check") for the message.
    pub fn from_status(what: &str, socket: &str, status: &tonic::Status) -> Self {
        let agent_msg = status.message();
        let (code, hint) = match status.code() {
            Code::InvalidArgument => (
                ErrorCode::InvalidNetworkConfig,
                "fix the network config, labels or CNI_* variables",
            ),
            Code::NotFound => (
                ErrorCode::UnknownContainer,
                "the container or its network namespace is gone; recreate the sandbox",
            ),
            Code::AlreadyExists => (
                ErrorCode::AlreadyExists,
                "delete the old attachment (CNI DEL) or use another interface name",
            ),
            Code::ResourceExhausted => (
                ErrorCode::PodCidrExhausted,
                "the node's pod CIDR is full; delete unused pods or give the node a larger CIDR",
            ),
            Code::FailedPrecondition => (
                ErrorCode::CheckMismatch,
                "the endpoint differs from what ADD set up; delete and re-add the container",
            ),
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled => (
                ErrorCode::TryAgainLater,
                "the agent cannot complete this right now; retry",
            ),
            Code::Unimplemented => (
                ErrorCode::InvalidNetworkConfig,
                "the socket does not serve the plugin API; point \"socket\" at the agent's \
                 --plugin-socket (default /run/membrane/plugin.sock), or upgrade the agent",
            ),
            _ => (
                ErrorCode::AgentFailure,
                "see the agent's log (journalctl -u membrane)",
            ),
        };
        CniError::new(
            code,
            format!("membrane agent refused the {what}: {agent_msg}; {hint}"),
        )
        .with_details(format!("gRPC {:?} from {socket}", status.code()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::config("bad").with_details("more");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("0.4.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"0.4.0","code":7,"msg":"bad","details":"more"})
        );
        // details is optional in the spec: omitted when empty.
        let v: serde_json::Value =
            serde_json::from_str(&CniError::io("x").to_json("1.0.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.0.0","code":5,"msg":"x"})
        );
    }

    #[test]
    fn agent_statuses_map_to_cni_codes() {
        let cases = [
            (Code::NotFound, 3),
            (Code::InvalidArgument, 7),
            (Code::Unavailable, 11),
            (Code::DeadlineExceeded, 11),
            (Code::ResourceExhausted, 100),
            (Code::AlreadyExists, 101),
            (Code::FailedPrecondition, 102),
            (Code::Internal, 103),
            (Code::Unimplemented, 7),
        ];
        for (status, want) in cases {
            let e = CniError::from_status("add", "/s", &tonic::Status::new(status, "why"));
            assert_eq!(e.code.as_u32(), want, "{status:?}");
            assert!(e.msg.contains("why"), "{}", e.msg);
        }
    }
}
