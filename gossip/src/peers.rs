//! Who may gossip with this node: every current member's node id, X25519 public key and
//! gossip address, as the registry lists them; and this node's own X25519 secret.
//!
//! Sealing needs address -> node id (chitchat names a datagram's destination by address),
//! opening needs node id -> public key (the sealed header names the sender). A sender that is
//! not in the table is not a member: its datagrams are dropped before any decryption
//! (`dropped_unknown_sender`). The agent replaces the table whenever the registry's node list
//! changes; the next datagram uses it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use x25519_dalek::{PublicKey, StaticSecret};

/// A node's X25519 static secret (its datapath key), used to derive pair keys. `Debug`
/// prints only the public half.
#[derive(Clone)]
pub struct NodeSecret(pub StaticSecret);

impl NodeSecret {
    /// A secret from its 32 bytes (as `x25519.key` holds them).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        NodeSecret(StaticSecret::from(bytes))
    }

    /// The public half, as the registry records it.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }
}

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeSecret(public {:02x?})", &self.public()[..4])
    }
}

/// One member as the table lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// X25519 public key.
    pub public: [u8; 32],
    /// Where it gossips.
    pub addr: SocketAddr,
}

/// The members, by id and by gossip address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerTable {
    by_id: BTreeMap<u64, Peer>,
    by_addr: HashMap<SocketAddr, u64>,
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces member `id`. An address already taken by another id moves to `id`
    /// (the registry refuses duplicates; the last one wins here).
    pub fn insert(&mut self, id: u64, public: [u8; 32], addr: SocketAddr) {
        if let Some(old) = self.by_id.insert(id, Peer { public, addr }) {
            if self.by_addr.get(&old.addr) == Some(&id) {
                self.by_addr.remove(&old.addr);
            }
        }
        self.by_addr.insert(addr, id);
    }

    /// Also reach member `id` at `addr` (a relay or a second address of it).
    pub fn alias(&mut self, addr: SocketAddr, id: u64) {
        self.by_addr.insert(addr, id);
    }

    /// Removes member `id`: its datagrams are refused as an unknown sender from now on.
    pub fn remove(&mut self, id: u64) {
        if self.by_id.remove(&id).is_some() {
            self.by_addr.retain(|_, v| *v != id);
        }
    }

    /// The member gossiping at `addr`.
    pub fn id_at(&self, addr: &SocketAddr) -> Option<u64> {
        self.by_addr.get(addr).copied()
    }

    /// Member `id`'s public key.
    pub fn public_of(&self, id: u64) -> Option<[u8; 32]> {
        self.by_id.get(&id).map(|p| p.public)
    }

    /// Member ids, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.by_id.keys().copied().collect()
    }
}

/// A shared, replaceable [`PeerTable`]: the agent writes, the transport reads per datagram.
#[derive(Clone, Debug, Default)]
pub struct Peers(Arc<RwLock<PeerTable>>);

impl Peers {
    /// A handle on `table`.
    pub fn new(table: PeerTable) -> Self {
        Peers(Arc::new(RwLock::new(table)))
    }

    /// Replaces the table; `false` if it was already equal (nothing changed).
    pub fn replace(&self, table: PeerTable) -> bool {
        let mut t = self.0.write().unwrap_or_else(|p| p.into_inner());
        if *t == table {
            return false;
        }
        *t = table;
        true
    }

    /// Changes the table in place.
    pub fn update(&self, f: impl FnOnce(&mut PeerTable)) {
        f(&mut self.0.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the table.
    pub fn with<R>(&self, f: impl FnOnce(&PeerTable) -> R) -> R {
        f(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn t10_lookups_both_ways_and_removal() {
        let mut t = PeerTable::new();
        t.insert(1, [1; 32], a(1));
        t.insert(2, [2; 32], a(2));
        t.alias(a(9), 2);
        assert_eq!((t.id_at(&a(1)), t.id_at(&a(9))), (Some(1), Some(2)));
        assert_eq!(t.public_of(2), Some([2; 32]));
        t.remove(2);
        assert_eq!(
            (t.id_at(&a(2)), t.id_at(&a(9)), t.public_of(2)),
            (None, None, None)
        );
        assert_eq!(t.ids(), vec![1]);
    }

    #[test]
    fn t11_a_moved_member_leaves_its_old_address() {
        let mut t = PeerTable::new();
        t.insert(1, [1; 32], a(1));
        t.insert(1, [3; 32], a(5));
        assert_eq!((t.id_at(&a(1)), t.id_at(&a(5))), (None, Some(1)));
        assert_eq!(t.public_of(1), Some([3; 32]));
    }

    #[test]
    fn t12_replace_reports_changes_only() {
        let p = Peers::default();
        let mut t = PeerTable::new();
        t.insert(1, [1; 32], a(1));
        assert!(p.replace(t.clone()));
        assert!(!p.replace(t));
        assert_eq!(p.with(|t| t.ids()), vec![1]);
        assert!(!format!("{:?}", NodeSecret(StaticSecret::from([7; 32]))).contains("07, 07"));
    }
}
