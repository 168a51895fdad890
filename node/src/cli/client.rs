//! The client commands: each asks the local agent over its socket and prints the answer.
//! One function per command group, so each reads as request, then print.

use anyhow::Context;
use membrane_proto::v1 as pb;

use super::args::{
    BpfCmd, BpfListCmd, CaCmd, Command, EndpointCmd, GossipCmd, IdentityCmd, MonitorArgs,
    MonitorKind, NodeCmd, PolicyCmd, TokenCmd,
};
use super::conn::{connect, status_err, Client};
use super::output::Output;

/// Reads a policy file, or stdin for "-".
pub(super) fn read_source(file: &std::path::Path) -> anyhow::Result<(String, String)> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read the policy from stdin")?;
        return Ok((s, "-".into()));
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok((text, file.display().to_string()))
}

pub(super) async fn run_client(
    cmd: Command,
    socket: &std::path::Path,
    out: &Output,
) -> anyhow::Result<()> {
    let mut c = connect(socket).await?;
    match cmd {
        Command::Status => out.status(
            &c.status(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Node(cmd) => node(&mut c, cmd, out).await?,
        Command::Token(cmd) => token(&mut c, cmd, out).await?,
        Command::Ca(cmd) => {
            let r = match cmd {
                CaCmd::Status => c.ca_status(pb::Empty {}).await,
                CaCmd::Rotate => c.ca_rotate(pb::Empty {}).await,
            };
            out.ca_status(&r.map_err(status_err)?.into_inner());
        }
        Command::Identity(cmd) => identity(&mut c, cmd, out).await?,
        Command::Members { watch } => members(&mut c, watch, out).await?,
        Command::Gossip(cmd) => gossip(&mut c, cmd, out).await?,
        Command::Encrypt(cmd) => super::encrypt::run(&mut c, cmd, out).await?,
        Command::Endpoint(cmd) => endpoint(&mut c, cmd, out).await?,
        Command::Bpf(cmd) => bpf(&mut c, cmd, out).await?,
        Command::Monitor(args) => monitor(&mut c, args, out).await?,
        Command::Policy(cmd) => policy(&mut c, cmd, out).await?,
        Command::Init(_) | Command::Agent(_) | Command::Bench { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(())
}

async fn node(c: &mut Client, cmd: NodeCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::List => out.nodes(
            &c.node_list(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        NodeCmd::Certs => out.node_certs(
            &c.node_certs(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        NodeCmd::RenewCert => {
            let cert = c
                .renew_certificate(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner();
            out.renewed_cert(&cert);
        }
        NodeCmd::Remove { id } => {
            c.node_remove(pb::NodeRemoveRequest { id })
                .await
                .map_err(status_err)?;
            out.message(
                &format!("node {id} removed"),
                serde_json::json!({"removed": id}),
            );
        }
    }
    Ok(())
}

async fn token(c: &mut Client, cmd: TokenCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            ttl,
            uses,
            description,
        } => {
            if uses == 0 {
                anyhow::bail!("--uses must be at least 1");
            }
            let req = pb::TokenCreateRequest {
                ttl_seconds: ttl,
                max_uses: uses,
                description,
            };
            out.token_created(&c.token_create(req).await.map_err(status_err)?.into_inner())
        }
        TokenCmd::List => out.tokens(
            &c.token_list(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        TokenCmd::Revoke { id } => {
            c.token_revoke(pb::TokenRevokeRequest { id: id.clone() })
                .await
                .map_err(status_err)?;
            out.message(
                &format!("token {id} revoked"),
                serde_json::json!({"revoked": id}),
            );
        }
    }
    Ok(())
}

async fn identity(c: &mut Client, cmd: IdentityCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        IdentityCmd::Allocate { labels } => out.identity(
            &c.identity_allocate(pb::IdentityRequest { labels })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        IdentityCmd::List => out.identities(
            &c.identity_list(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        IdentityCmd::Release { labels } => out.released(
            &c.identity_release(pb::IdentityRequest { labels })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
    }
    Ok(())
}

async fn members(c: &mut Client, watch: bool, out: &Output) -> anyhow::Result<()> {
    let mut stream = c
        .watch_members(pb::Empty {})
        .await
        .map_err(status_err)?
        .into_inner();
    if watch {
        while let Some(e) = stream.message().await.map_err(status_err)? {
            out.member_event(&e);
        }
        return Ok(());
    }
    // The stream opens with the current members, then waits for changes: take what
    // arrives at once.
    let mut members = Vec::new();
    while let Ok(Ok(Some(e))) =
        tokio::time::timeout(std::time::Duration::from_millis(200), stream.message()).await
    {
        members.push(e);
    }
    out.members(&members);
    Ok(())
}

async fn gossip(c: &mut Client, cmd: GossipCmd, out: &Output) -> anyhow::Result<()> {
    let keyring = match cmd {
        GossipCmd::Keys => c.gossip_keyring(pb::Empty {}).await,
        GossipCmd::RotateKey => c.gossip_rotate_key(pb::Empty {}).await,
    };
    out.keyring(&keyring.map_err(status_err)?.into_inner());
    Ok(())
}

async fn endpoint(c: &mut Client, cmd: EndpointCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        EndpointCmd::List { local } => out.endpoints(
            &c.endpoint_list(pb::EndpointListRequest { local_only: local })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        EndpointCmd::Get { key } => out.endpoint(
            &c.endpoint_get(pb::EndpointGetRequest { key })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
    }
    Ok(())
}

async fn bpf(c: &mut Client, cmd: BpfCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        BpfCmd::Ipcache(BpfListCmd::List) => out.bpf_ipcache(
            &c.bpf_ipcache_list(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        BpfCmd::Endpoint(BpfListCmd::List) => out.bpf_endpoints(
            &c.bpf_endpoint_list(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
    }
    Ok(())
}

async fn monitor(c: &mut Client, args: MonitorArgs, out: &Output) -> anyhow::Result<()> {
    let kind = match args.kind {
        MonitorKind::Drop => pb::MonitorType::Drop,
        MonitorKind::Policy => pb::MonitorType::Policy,
        MonitorKind::Trace => pb::MonitorType::Trace,
        MonitorKind::All => pb::MonitorType::All,
    };
    let req = pb::MonitorRequest {
        endpoint_id: args.endpoint.unwrap_or(0),
        identity: args.identity.unwrap_or(0),
        r#type: kind as i32,
    };
    let mut stream = c.monitor(req).await.map_err(status_err)?.into_inner();
    loop {
        tokio::select! {
            msg = stream.message() => match msg.map_err(status_err)? {
                Some(m) => out.flow_event(&m),
                None => anyhow::bail!("the agent ended the event stream (did it stop?)"),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn policy(c: &mut Client, cmd: PolicyCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Import { file } => {
            let (source, file) = read_source(&file)?;
            out.policy_imported(
                &c.policy_import(pb::PolicyImportRequest { source, file })
                    .await
                    .map_err(status_err)?
                    .into_inner(),
            )
        }
        PolicyCmd::Get { name } => out.policies(
            &c.policy_get(pb::PolicyGetRequest {
                name: name.unwrap_or_default(),
            })
            .await
            .map_err(status_err)?
            .into_inner(),
        ),
        PolicyCmd::Delete { name } => {
            let r = c
                .policy_delete(pb::PolicyDeleteRequest { name: name.clone() })
                .await
                .map_err(status_err)?
                .into_inner();
            out.message(
                &format!("policy {name} deleted (revision {})", r.revision),
                serde_json::json!({"deleted": name, "revision": r.revision}),
            );
        }
        PolicyCmd::Wait { revision, timeout } => out.policy_waited(
            &c.policy_wait(pb::PolicyWaitRequest {
                revision,
                timeout_seconds: timeout,
            })
            .await
            .map_err(status_err)?
            .into_inner(),
        ),
        PolicyCmd::Explain { from, to, port } => out.policy_explained(
            &c.policy_explain(pb::PolicyExplainRequest { from, to, port })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        PolicyCmd::Validate { .. } => unreachable!("handled before connecting"),
    }
    Ok(())
}
