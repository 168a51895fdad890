//! First start after `membrane init`: make this node a one-member Raft cluster and commit the
//! cluster's settings. Safe to repeat: a crash half-way is finished on the next start.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use membrane_consensus::{Command, Raft, RegistryError};
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, ServerState};
use tracing::info;

use crate::registry::client::{ClientError, RegistryClient};
use crate::state::{Bootstrap, NodeIdentity};

pub async fn bootstrap(
    raft: &Raft,
    client: &RegistryClient,
    b: Bootstrap,
    me: &NodeIdentity,
) -> anyhow::Result<()> {
    let members = BTreeMap::from([(me.node_id, BasicNode::new(&me.rpc_addr))]);
    match raft.initialize(members).await {
        Ok(()) => info!("raft initialised with this node as the only voter"),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
            info!("raft already initialised")
        }
        Err(e) => bail!("cannot initialise raft: {e}"),
    }
    raft.wait(Some(Duration::from_secs(30)))
        .state(ServerState::Leader, "become leader after init")
        .await
        .context("this node did not become leader after init")?;
    let cmd = Command::Bootstrap {
        config: b.config,
        first_node: b.first_node,
        first_token: b.first_token,
        gossip_key: b.gossip_key,
    };
    match client.write(cmd).await {
        Ok(_) => info!("cluster created"),
        Err(ClientError::Refused(RegistryError::AlreadyBootstrapped { .. })) => {
            info!("cluster already created")
        }
        Err(e) => bail!("cannot commit the cluster settings: {e}"),
    }
    Ok(())
}
