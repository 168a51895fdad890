//! Join-time trust: the members' TLS key hashes a node received in its `JoinResponse`.
//!
//! A node that has just joined has an empty registry copy, so it cannot map a caller's
//! certificate to a registry node; yet it must accept AppendEntries and InstallSnapshot from
//! the leader to catch up. It trusts exactly the members listed when it joined (received
//! over the pinned-CA connection the join used), and only until its registry copy is
//! bootstrapped; from then on the registry decides ([`super::Authenticator`]). A node
//! removed before this node joined is not in the list, so its certificate is refused here
//! too. Stored as `<state-dir>/join-trust.json`, `{ "<node id>": "<64 hex>" }`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use membrane_consensus::registry::Sha256;
use membrane_consensus::NodeId;

/// File name inside the state directory.
pub const FILE: &str = "join-trust.json";

/// Member key hashes as of this node's join. Empty for nodes that created the cluster or
/// joined before this file existed (their registry copy is bootstrapped, so it is unused).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinTrust {
    keys: BTreeMap<NodeId, Sha256>,
}

impl JoinTrust {
    /// From the `JoinResponse` map (hex digests); a malformed digest is an error, not skipped.
    pub fn from_hex_map(map: BTreeMap<NodeId, String>) -> anyhow::Result<JoinTrust> {
        let keys = map
            .into_iter()
            .map(|(id, hex)| {
                hex.parse::<Sha256>()
                    .map(|k| (id, k))
                    .with_context(|| format!("the key hash of member {id}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(JoinTrust { keys })
    }

    /// The key hash recorded for `id`.
    pub fn key(&self, id: NodeId) -> Option<&Sha256> {
        self.keys.get(&id)
    }

    /// Reads `<state_dir>/join-trust.json`; a missing file is an empty trust.
    pub fn load(state_dir: &Path) -> anyhow::Result<JoinTrust> {
        let path = state_dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(JoinTrust::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let map: BTreeMap<NodeId, String> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is corrupt; remove the state directory and join the node again",
                path.display()
            )
        })?;
        JoinTrust::from_hex_map(map).with_context(|| format!("{} is corrupt", path.display()))
    }

    /// Writes `<state_dir>/join-trust.json` (mode 0600: it says who the node trusts).
    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let map: BTreeMap<NodeId, String> = self
            .keys
            .iter()
            .map(|(id, k)| (*id, k.to_string()))
            .collect();
        let path = state_dir.join(FILE);
        let tmp = state_dir.join(format!("{FILE}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(&map)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_round_trips_through_the_state_dir_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(JoinTrust::load(dir.path()).unwrap(), JoinTrust::default());
        let t =
            JoinTrust::from_hex_map([(1, "ab".repeat(32)), (4, "cd".repeat(32))].into()).unwrap();
        t.save(dir.path()).unwrap();
        let back = JoinTrust::load(dir.path()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.key(4), Some(&Sha256([0xcd; 32])));
        assert_eq!(back.key(2), None);
    }

    #[test]
    fn t11_malformed_digests_and_files_are_errors() {
        assert!(JoinTrust::from_hex_map([(1, "zz".into())].into()).is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "not json").unwrap();
        let err = JoinTrust::load(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("corrupt"), "{err:#}");
    }
}
