//! Replay protection for sealed packets: per sender, the newest epoch seen and a sliding
//! window over counters, as IPsec (RFC 4303 §3.4.3) and WireGuard do.
//!
//! A packet is accepted once. A counter above the window's top moves the window forward; one
//! inside the window is accepted if its bit is not set yet (packets may be reordered by up to
//! [`WINDOW`] - 1 positions); one below the window is refused as too old, because the window
//! can no longer tell whether it was seen. Epochs order a sender's lifetimes: a newer epoch
//! (the sender restarted, its counter starts again) resets the window; an older one is a
//! packet from a previous life, refused.
//!
//! Check only *authenticated* headers: a forged header must never move a window forward.
//!
//! [`ReplayWindow`] is one sender's state, for callers that keep per-peer state themselves
//! (the datapath tunnel); [`ReplayGuard`] maps any sender key (a node id by default) to its
//! window. Pure: no IO, no clock.

use std::collections::HashMap;
use std::hash::Hash;

/// Counters remembered behind the highest one (the bitmap's width).
pub const WINDOW: u64 = 128;

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    /// The same counter arrived before in this epoch.
    #[error("counter {0} was already seen")]
    Duplicate(u64),
    /// The counter fell behind the window.
    #[error("counter {0} is older than the replay window")]
    TooOld(u64),
    /// The sender has restarted since that packet was sealed.
    #[error("epoch {0} is older than the sender's current one")]
    StaleEpoch(u64),
}

/// One sender's window: its current epoch, the highest counter seen in it, and a bitmap of
/// the [`WINDOW`] counters at and below the highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayWindow {
    epoch: u64,
    highest: u64,
    /// Bit i set: counter `highest - i` seen.
    seen: u128,
}

impl ReplayWindow {
    /// A window that has seen `(epoch, counter)` and nothing else.
    pub fn new(epoch: u64, counter: u64) -> ReplayWindow {
        ReplayWindow {
            epoch,
            highest: counter,
            seen: 1,
        }
    }

    /// The sender's current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The highest counter seen in the current epoch.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Whether `(epoch, counter)` would be accepted, without recording it (for callers that
    /// must authenticate first and record after).
    pub fn check(&self, epoch: u64, counter: u64) -> Result<(), Replay> {
        if epoch < self.epoch {
            return Err(Replay::StaleEpoch(epoch));
        }
        if epoch > self.epoch || counter > self.highest {
            return Ok(());
        }
        let back = self.highest - counter;
        if back >= WINDOW {
            return Err(Replay::TooOld(counter));
        }
        if self.seen & (1u128 << back) != 0 {
            return Err(Replay::Duplicate(counter));
        }
        Ok(())
    }

    /// Accepts `(epoch, counter)` once, recording it; refuses replays and changes nothing then.
    pub fn check_and_update(&mut self, epoch: u64, counter: u64) -> Result<(), Replay> {
        self.check(epoch, counter)?;
        if epoch > self.epoch {
            *self = ReplayWindow::new(epoch, counter);
        } else if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = counter;
        } else {
            self.seen |= 1u128 << (self.highest - counter);
        }
        Ok(())
    }
}

/// Replay windows of every sender, keyed by `K` (a node id unless told otherwise).
#[derive(Debug, Clone)]
pub struct ReplayGuard<K = u64> {
    senders: HashMap<K, ReplayWindow>,
}

impl<K> Default for ReplayGuard<K> {
    fn default() -> Self {
        ReplayGuard {
            senders: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash> ReplayGuard<K> {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `(epoch, counter)` from `sender` once, recording it; refuses replays.
    pub fn check_and_update(&mut self, sender: K, epoch: u64, counter: u64) -> Result<(), Replay> {
        match self.senders.get_mut(&sender) {
            Some(w) => w.check_and_update(epoch, counter),
            None => {
                self.senders
                    .insert(sender, ReplayWindow::new(epoch, counter));
                Ok(())
            }
        }
    }

    /// The window of one sender, if any packet of it was accepted.
    pub fn window(&self, sender: &K) -> Option<&ReplayWindow> {
        self.senders.get(sender)
    }

    /// Forgets a sender (for example a node removed from the cluster). Its next packet,
    /// whatever its epoch, starts a new window: call this only for senders that are gone.
    pub fn forget(&mut self, sender: &K) {
        self.senders.remove(sender);
    }

    /// Number of senders tracked.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether no sender is tracked.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order() {
        let mut g = ReplayGuard::new();
        for c in 0..1000 {
            g.check_and_update(1u64, 5, c).unwrap();
        }
        assert_eq!(g.window(&1).map(|w| w.highest()), Some(999));
    }

    #[test]
    fn out_of_order_within_the_window() {
        let mut g = ReplayGuard::new();
        g.check_and_update(1u64, 5, 1000).unwrap();
        // Everything the window still covers arrives late, in reverse: all accepted once.
        for c in (1000 - (WINDOW - 1)..1000).rev() {
            g.check_and_update(1, 5, c).unwrap();
        }
        for c in 1000 - (WINDOW - 1)..=1000 {
            assert_eq!(g.check_and_update(1, 5, c), Err(Replay::Duplicate(c)));
        }
        // Interleaved: 1010 before 1005 before 1008.
        for c in [1010, 1005, 1008] {
            g.check_and_update(1, 5, c).unwrap();
        }
        assert_eq!(g.check_and_update(1, 5, 1005), Err(Replay::Duplicate(1005)));
        g.check_and_update(1, 5, 1009).unwrap();
    }

    #[test]
    fn duplicates() {
        let mut g = ReplayGuard::new();
        g.check_and_update(1u64, 5, 7).unwrap();
        assert_eq!(g.check_and_update(1, 5, 7), Err(Replay::Duplicate(7)));
        g.check_and_update(1, 5, 8).unwrap();
        assert_eq!(g.check_and_update(1, 5, 7), Err(Replay::Duplicate(7)));
        assert_eq!(g.check_and_update(1, 5, 8), Err(Replay::Duplicate(8)));
    }

    #[test]
    fn too_old_at_the_window_edge() {
        let mut w = ReplayWindow::new(5, 1000);
        // The oldest counter the window covers is accepted, one below it is too old.
        assert_eq!(
            w.check(5, 1000 - WINDOW),
            Err(Replay::TooOld(1000 - WINDOW))
        );
        w.check_and_update(5, 1000 - (WINDOW - 1)).unwrap();
        // A jump wider than the window clears it entirely.
        w.check_and_update(5, 1000 + 10 * WINDOW).unwrap();
        assert_eq!(w.check_and_update(5, 1000), Err(Replay::TooOld(1000)));
        w.check_and_update(5, 1000 + 10 * WINDOW - 1).unwrap();
        // A jump of exactly the window keeps nothing but the new top.
        let top = 1000 + 11 * WINDOW;
        w.check_and_update(5, top).unwrap();
        assert_eq!(w.check(5, top - WINDOW), Err(Replay::TooOld(top - WINDOW)));
        assert_eq!(w.check(5, top - (WINDOW - 1)), Ok(()));
    }

    #[test]
    fn refusals_change_nothing() {
        let mut w = ReplayWindow::new(5, 300);
        let before = w;
        assert!(w.check_and_update(5, 300).is_err());
        assert!(w.check_and_update(5, 1).is_err());
        assert!(w.check_and_update(4, 1000).is_err());
        assert_eq!(w, before);
        // check() never records.
        assert_eq!(w.check(5, 301), Ok(()));
        assert_eq!(w.check(5, 301), Ok(()));
        assert_eq!(w, before);
    }

    #[test]
    fn epoch_change_resets_newer_and_refuses_older() {
        let mut g = ReplayGuard::new();
        g.check_and_update(1u64, 5, 100).unwrap();
        g.check_and_update(1, 6, 0).unwrap(); // restarted sender: counter back at 0
        g.check_and_update(1, 6, 1).unwrap();
        assert_eq!(g.check_and_update(1, 6, 0), Err(Replay::Duplicate(0)));
        assert_eq!(g.check_and_update(1, 5, 101), Err(Replay::StaleEpoch(5)));
        assert_eq!(g.window(&1).map(|w| w.epoch()), Some(6));
        g.forget(&1);
        assert!(g.is_empty());
        g.check_and_update(1, 5, 101).unwrap();
    }

    #[test]
    fn senders_are_independent_and_keys_are_generic() {
        let mut g: ReplayGuard<(u64, u32)> = ReplayGuard::new();
        g.check_and_update((1, 7), 5, 20).unwrap();
        g.check_and_update((2, 7), 5, 20).unwrap();
        g.check_and_update((1, 8), 5, 20).unwrap();
        assert_eq!(
            g.check_and_update((1, 7), 5, 20),
            Err(Replay::Duplicate(20))
        );
        assert_eq!(g.len(), 3);
    }
}
