//! Replay protection for sealed packets: per sender, the newest epoch seen and a sliding
//! window over counters (as IPsec and WireGuard do).
//!
//! A packet is accepted once: a counter above the window moves it forward; one inside the
//! window is accepted if its bit is not set yet; one below the window is too old. A newer
//! epoch (the sender restarted) starts a fresh window; an older epoch is refused.

use std::collections::HashMap;

/// Counters remembered behind the highest one.
pub const WINDOW: u64 = 128;

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    /// The same counter arrived before.
    #[error("counter {0} was already seen")]
    Duplicate(u64),
    /// The counter fell behind the window.
    #[error("counter {0} is older than the replay window")]
    TooOld(u64),
    /// The sender has restarted since that packet was sealed.
    #[error("epoch {0} is older than the sender's current one")]
    StaleEpoch(u64),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    epoch: u64,
    highest: u64,
    /// Bit i set: counter `highest - i` seen.
    seen: u128,
}

/// Replay windows of every sender.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: HashMap<u64, Window>,
}

impl ReplayGuard {
    /// Accepts `(epoch, counter)` from `sender` once, recording it; refuses replays.
    pub fn check_and_update(&mut self, sender: u64, epoch: u64, counter: u64) -> Result<(), Replay> {
        let w = match self.senders.get_mut(&sender) {
            None => {
                self.senders.insert(sender, Window { epoch, highest: counter, seen: 1 });
                return Ok(());
            }
            Some(w) => w,
        };
        if epoch < w.epoch {
            return Err(Replay::StaleEpoch(epoch));
        }
        if epoch > w.epoch {
            *w = Window { epoch, highest: counter, seen: 1 };
            return Ok(());
        }
        if counter > w.highest {
            let shift = counter - w.highest;
            w.seen = if shift >= WINDOW { 0 } else { w.seen << shift };
            w.seen |= 1;
            w.highest = counter;
            return Ok(());
        }
        let back = w.highest - counter;
        if back >= WINDOW {
            return Err(Replay::TooOld(counter));
        }
        let bit = 1u128 << back;
        if w.seen & bit != 0 {
            return Err(Replay::Duplicate(counter));
        }
        w.seen |= bit;
        Ok(())
    }

    /// Forgets a sender (for example a node removed from the cluster).
    pub fn forget(&mut self, sender: u64) {
        self.senders.remove(&sender);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_out_of_order_and_duplicates() {
        let mut g = ReplayGuard::default();
        for c in 0..10 {
            g.check_and_update(1, 5, c).unwrap();
        }
        assert_eq!(g.check_and_update(1, 5, 9), Err(Replay::Duplicate(9)));
        g.check_and_update(1, 5, 20).unwrap();
        g.check_and_update(1, 5, 15).unwrap(); // late but inside the window
        assert_eq!(g.check_and_update(1, 5, 15), Err(Replay::Duplicate(15)));
        g.check_and_update(1, 5, 20 + WINDOW + 10).unwrap();
        assert_eq!(g.check_and_update(1, 5, 20), Err(Replay::TooOld(20)));
        // Another sender has its own window.
        g.check_and_update(2, 5, 20).unwrap();
    }

    #[test]
    fn epochs_reset_or_refuse() {
        let mut g = ReplayGuard::default();
        g.check_and_update(1, 5, 100).unwrap();
        g.check_and_update(1, 6, 0).unwrap(); // restarted sender
        g.check_and_update(1, 6, 1).unwrap();
        assert_eq!(g.check_and_update(1, 5, 101), Err(Replay::StaleEpoch(5)));
        g.forget(1);
        g.check_and_update(1, 5, 101).unwrap();
    }
}
