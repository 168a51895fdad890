//! The CLI's connection to the local agent (agent.sock), shared by the command modules.

use anyhow::{anyhow, Context};
use membrane_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

pub(super) type Client = AgentClient<Channel>;

pub(super) async fn connect(socket: &std::path::Path) -> anyhow::Result<Client> {
    let channel = crate::transport::unix_channel(socket)
        .await
        .with_context(|| {
            format!(
                "cannot reach the agent at {}; is `membrane agent` running (or pass --socket)?",
                socket.display()
            )
        })?;
    Ok(AgentClient::new(channel))
}

pub(super) fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}", s.message())
}
