//! `membrane encrypt enable|disable|rotate|status`.

use std::time::{Duration, Instant};

use membrane_proto::v1 as pb;

use super::args::EncryptCmd;
use super::conn::{status_err, Client};
use super::output::Output;

pub(super) async fn run(c: &mut Client, cmd: EncryptCmd, out: &Output) -> anyhow::Result<()> {
    let status = match cmd {
        EncryptCmd::Status => c
            .encryption_status(pb::Empty {})
            .await
            .map_err(status_err)?,
        EncryptCmd::Disable => c
            .encryption_set(pb::EncryptionSetRequest { enabled: false })
            .await
            .map_err(status_err)?,
        EncryptCmd::Enable { no_wait, timeout } => {
            let s = c
                .encryption_set(pb::EncryptionSetRequest { enabled: true })
                .await
                .map_err(status_err)?
                .into_inner();
            let s = if no_wait {
                s
            } else {
                // Encryption is on once an epoch is active and this node's device runs.
                wait(c, timeout, |s| s.active_epoch != 0 && s.device_up).await?
            };
            out.encryption_status(&s);
            return Ok(());
        }
        EncryptCmd::Rotate { no_wait, timeout } => {
            let s = c
                .encryption_rotate(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner();
            let begun = s.pending_epoch;
            let s = if no_wait {
                s
            } else {
                wait(c, timeout, |s| s.active_epoch >= begun).await?
            };
            out.encryption_status(&s);
            return Ok(());
        }
    };
    out.encryption_status(&status.into_inner());
    Ok(())
}

async fn wait(
    c: &mut Client,
    timeout: u64,
    done: impl Fn(&pb::EncryptionStatusResponse) -> bool,
) -> anyhow::Result<pb::EncryptionStatusResponse> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let s = c
            .encryption_status(pb::Empty {})
            .await
            .map_err(status_err)?
            .into_inner();
        if done(&s) {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            let waiting: Vec<u64> = s
                .epochs
                .iter()
                .filter(|e| e.state == "pending")
                .flat_map(|e| e.waiting_for.iter().copied())
                .collect();
            anyhow::bail!(
                "not done after {timeout} s (active epoch {}, pending {}, waiting for nodes {waiting:?}; a node that is up but has not published blocks activation); see `membrane encrypt status`",
                s.active_epoch,
                s.pending_epoch
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
