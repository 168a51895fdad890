//! The cluster's gossip keyring: the keys that seal gossip packets (the Consul keyring model).
//!
//! One key is primary and seals what a node sends; every installed key opens what it
//! receives. Rotation is install (everyone accepts the new key), use (everyone sends with
//! it), remove (the old key stops working) — three committed commands, so no node is ever
//! asked to send with a key another node cannot open yet, as long as the agent waits for
//! every node to report the install before it switches (see the node's rotation).

use serde::{Deserialize, Serialize};

use super::{Registry, RegistryError, Response};

/// Most keys installed at once; rotation needs two.
pub const MAX_GOSSIP_KEYS: usize = 4;

/// A 32-byte ChaCha20-Poly1305 key with its id (the id travels in every packet header).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKey {
    pub id: u32,
    /// 64 hex characters.
    pub key_hex: String,
}

impl GossipKey {
    /// The key bytes.
    pub fn bytes(&self) -> Result<[u8; 32], RegistryError> {
        let invalid =
            || RegistryError::InvalidGossipKey(format!("key {} is not 64 hex characters", self.id));
        let v = hex_decode(&self.key_hex).ok_or_else(invalid)?;
        v.try_into().map_err(|_| invalid())
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Installed keys and which one is primary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKeyring {
    keys: Vec<GossipKey>,
    primary: u32,
}

impl GossipKeyring {
    /// A keyring with one key, primary.
    pub fn new(key: GossipKey) -> Result<Self, RegistryError> {
        key.bytes()?;
        Ok(GossipKeyring {
            primary: key.id,
            keys: vec![key],
        })
    }

    pub fn keys(&self) -> &[GossipKey] {
        &self.keys
    }

    pub fn primary(&self) -> u32 {
        self.primary
    }

    /// Adds a key that nodes accept but do not send with yet.
    pub fn install(&mut self, key: GossipKey) -> Result<(), RegistryError> {
        key.bytes()?;
        if self.keys.iter().any(|k| k.id == key.id) {
            return Err(RegistryError::InvalidGossipKey(format!(
                "key id {} is already installed",
                key.id
            )));
        }
        if self.keys.len() >= MAX_GOSSIP_KEYS {
            return Err(RegistryError::InvalidGossipKey(format!(
                "{MAX_GOSSIP_KEYS} keys are installed already; remove an old one first"
            )));
        }
        self.keys.push(key);
        Ok(())
    }

    /// Makes an installed key the one nodes send with.
    pub fn use_key(&mut self, id: u32) -> Result<(), RegistryError> {
        if !self.keys.iter().any(|k| k.id == id) {
            return Err(RegistryError::InvalidGossipKey(format!(
                "key id {id} is not installed"
            )));
        }
        self.primary = id;
        Ok(())
    }

    /// Removes a key that is not primary.
    pub fn remove(&mut self, id: u32) -> Result<(), RegistryError> {
        if id == self.primary {
            return Err(RegistryError::InvalidGossipKey(format!(
                "key id {id} is the primary key; make another key primary first"
            )));
        }
        let before = self.keys.len();
        self.keys.retain(|k| k.id != id);
        if self.keys.len() == before {
            return Err(RegistryError::InvalidGossipKey(format!(
                "key id {id} is not installed"
            )));
        }
        Ok(())
    }
}

impl Registry {
    /// The gossip keyring, once bootstrapped.
    pub fn gossip_keyring(&self) -> Option<&GossipKeyring> {
        self.gossip_keyring.as_ref()
    }

    /// Changes the keyring on a copy, so a refused change leaves it as it was.
    pub(super) fn with_keyring(
        &mut self,
        change: impl FnOnce(&mut GossipKeyring) -> Result<(), RegistryError>,
    ) -> Result<Response, RegistryError> {
        let mut ring = self
            .gossip_keyring
            .clone()
            .ok_or(RegistryError::NotBootstrapped)?;
        change(&mut ring)?;
        self.gossip_keyring = Some(ring);
        Ok(Response::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::{bootstrapped, gossip_key, refused};
    use crate::registry::Command;

    fn key(id: u32) -> GossipKey {
        GossipKey {
            id,
            key_hex: format!("{:02x}", id).repeat(32),
        }
    }

    #[test]
    fn rotation_install_use_remove() {
        let mut ring = GossipKeyring::new(key(1)).unwrap();
        ring.install(key(2)).unwrap();
        assert_eq!(ring.primary(), 1);
        assert!(ring.remove(1).is_err(), "the primary cannot be removed");
        ring.use_key(2).unwrap();
        ring.remove(1).unwrap();
        assert_eq!(ring.keys(), &[key(2)]);
        assert_eq!(ring.primary(), 2);
    }

    #[test]
    fn bad_keys_and_ids_are_refused() {
        let mut ring = GossipKeyring::new(key(1)).unwrap();
        assert!(ring.install(key(1)).is_err());
        assert!(ring
            .install(GossipKey {
                id: 9,
                key_hex: "abc".into()
            })
            .is_err());
        assert!(ring
            .install(GossipKey {
                id: 9,
                key_hex: "zz".repeat(32)
            })
            .is_err());
        assert!(ring.use_key(7).is_err());
        assert!(ring.remove(7).is_err());
        for id in 2..=4 {
            ring.install(key(id)).unwrap();
        }
        assert!(
            ring.install(key(5)).is_err(),
            "at most {MAX_GOSSIP_KEYS} keys"
        );
        assert_eq!(key(3).bytes().unwrap(), [3u8; 32]);
    }

    #[test]
    fn t70_gossip_key_rotation_through_commands() {
        let mut r = bootstrapped();
        assert_eq!(r.gossip_keyring().unwrap().primary(), 1);
        refused(&mut r, Command::RemoveGossipKey { id: 1 }, |e| {
            matches!(e, RegistryError::InvalidGossipKey(_))
        });
        refused(&mut r, Command::UseGossipKey { id: 2 }, |e| {
            matches!(e, RegistryError::InvalidGossipKey(_))
        });
        assert_eq!(
            r.apply(Command::InstallGossipKey { key: gossip_key(2) }),
            Response::Ok
        );
        assert_eq!(r.apply(Command::UseGossipKey { id: 2 }), Response::Ok);
        assert_eq!(r.apply(Command::RemoveGossipKey { id: 1 }), Response::Ok);
        let ring = r.gossip_keyring().unwrap();
        assert_eq!((ring.primary(), ring.keys().len()), (2, 1));
    }
}
