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
//! Two more rules close what a window alone leaves open:
//!
//! - **Epochs from the future.** An epoch is the sender's start time in ms, so it can never be
//!   ahead of the receiver's clock by more than the clock skew between them. One further
//!   ahead than [`MAX_FUTURE_SKEW_MS`] is refused ([`Replay::FutureEpoch`]) and moves nothing:
//!   otherwise one such packet (from anyone able to seal it) would put the window in the far
//!   future and make every real packet of that sender stale until the receiver restarts.
//! - **Receiver restarts.** The windows live in memory, so a restarted receiver would accept
//!   every old packet of the sender's current epoch once more. [`ReplayGuard::marks`] gives
//!   each sender's high-water mark (epoch, highest counter, and a margin) for the caller to
//!   persist; [`ReplayGuard::resume`] starts from them. A resumed window refuses older epochs,
//!   and in the same epoch every counter up to `highest + margin`: packets sealed after the
//!   last save but before the restart are refused too, because the margin is at least twice
//!   what the sender's counter advanced between the last two saves (at least
//!   [`MIN_RESUME_MARGIN`], at most [`MAX_RESUME_MARGIN`]). The price is that right after a
//!   quick restart the sender's first fresh packets, up to the margin, are refused as well;
//!   its next ones, and any new epoch, are accepted.
//!
//! [`ReplayWindow`] is one sender's state, for callers that keep per-peer state themselves
//! (the datapath tunnel); [`ReplayGuard`] maps any sender key (a node id by default) to its
//! window. Pure: no IO, no clock (the receiver's time is passed in).

use std::collections::HashMap;
use std::hash::Hash;

/// Counters remembered behind the highest one (the bitmap's width).
pub const WINDOW: u64 = 128;

/// How far (ms) a sender's epoch may be ahead of the receiver's clock: 5 minutes of skew.
pub const MAX_FUTURE_SKEW_MS: u64 = 5 * 60 * 1000;

/// Smallest margin a resumed window adds above a saved counter.
pub const MIN_RESUME_MARGIN: u64 = 256;

/// Largest margin a resumed window adds above a saved counter (a sender that fast would
/// otherwise be refused for too long after a restart).
pub const MAX_RESUME_MARGIN: u64 = 1 << 16;

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
    /// The epoch (a start time in ms) is further ahead of the receiver's clock than any
    /// clock skew explains: forged, or the sender's clock is wrong.
    #[error("epoch {epoch} is more than {MAX_FUTURE_SKEW_MS} ms ahead of this node's clock ({now_ms}); check the sender's clock")]
    FutureEpoch {
        /// The claimed epoch.
        epoch: u64,
        /// The receiver's clock.
        now_ms: u64,
    },
}

/// What a receiver persists about one sender to resume its window after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HighWater {
    /// The sender's epoch.
    pub epoch: u64,
    /// The highest counter accepted in it.
    pub counter: u64,
    /// Counters above `counter` refused after a resume, for packets accepted after the save.
    pub margin: u64,
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

    /// A window resumed from a saved mark: refuses older epochs, and in the mark's epoch
    /// every counter up to `counter + margin`.
    pub fn resumed(mark: HighWater) -> ReplayWindow {
        ReplayWindow {
            epoch: mark.epoch,
            highest: mark.counter.saturating_add(mark.margin),
            seen: u128::MAX,
        }
    }
}

/// Refuses an epoch further ahead of `now_ms` than [`MAX_FUTURE_SKEW_MS`].
pub fn check_epoch_skew(epoch: u64, now_ms: u64) -> Result<(), Replay> {
    if epoch > now_ms.saturating_add(MAX_FUTURE_SKEW_MS) {
        return Err(Replay::FutureEpoch { epoch, now_ms });
    }
    Ok(())
}

/// Replay windows of every sender, keyed by `K` (a node id unless told otherwise).
#[derive(Debug, Clone)]
pub struct ReplayGuard<K = u64> {
    senders: HashMap<K, ReplayWindow>,
    /// Per sender, the (epoch, highest counter) of the last [`ReplayGuard::marks`].
    marked: HashMap<K, (u64, u64)>,
    /// Saved marks of resumed senders, reported as they were until the sender is heard from.
    resumed: HashMap<K, HighWater>,
}

impl<K> Default for ReplayGuard<K> {
    fn default() -> Self {
        ReplayGuard {
            senders: HashMap::new(),
            marked: HashMap::new(),
            resumed: HashMap::new(),
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

    /// As [`ReplayGuard::check_and_update`], first refusing an epoch from the future
    /// ([`check_epoch_skew`]) against the receiver's clock `now_ms`; a refusal moves nothing.
    pub fn check_and_update_at(
        &mut self,
        sender: K,
        epoch: u64,
        counter: u64,
        now_ms: u64,
    ) -> Result<(), Replay> {
        check_epoch_skew(epoch, now_ms)?;
        self.check_and_update(sender, epoch, counter)
    }

    /// A guard that starts from saved high-water marks ([`ReplayWindow::resumed`]).
    pub fn resume(marks: impl IntoIterator<Item = (K, HighWater)>) -> Self
    where
        K: Clone,
    {
        let mut g = Self::default();
        for (k, m) in marks {
            g.marked.insert(k.clone(), (m.epoch, m.counter));
            g.resumed.insert(k.clone(), m);
            g.senders.insert(k, ReplayWindow::resumed(m));
        }
        g
    }

    /// Every sender's high-water mark, to persist; the margin is twice what its counter
    /// advanced since the previous call (within [`MIN_RESUME_MARGIN`]..=[`MAX_RESUME_MARGIN`]),
    /// so call this at the rate the caller saves. A resumed sender not heard from since keeps
    /// its saved mark.
    pub fn marks(&mut self) -> Vec<(K, HighWater)>
    where
        K: Clone,
    {
        let mut out = Vec::with_capacity(self.senders.len());
        for (k, w) in &self.senders {
            if let Some(saved) = self.resumed.get(k) {
                if *w == ReplayWindow::resumed(*saved) {
                    out.push((k.clone(), *saved));
                    continue;
                }
            }
            self.resumed.remove(k);
            let (epoch, highest) = (w.epoch(), w.highest());
            let advanced = match self.marked.insert(k.clone(), (epoch, highest)) {
                Some((e, c)) if e == epoch => highest.saturating_sub(c),
                // A new epoch, or never marked: all of it is new.
                _ => highest,
            };
            let margin = advanced
                .saturating_mul(2)
                .clamp(MIN_RESUME_MARGIN, MAX_RESUME_MARGIN);
            out.push((
                k.clone(),
                HighWater {
                    epoch,
                    counter: highest,
                    margin,
                },
            ));
        }
        out
    }

    /// The window of one sender, if any packet of it was accepted.
    pub fn window(&self, sender: &K) -> Option<&ReplayWindow> {
        self.senders.get(sender)
    }

    /// Forgets a sender (for example a node removed from the cluster). Its next packet,
    /// whatever its epoch, starts a new window: call this only for senders that are gone.
    pub fn forget(&mut self, sender: &K) {
        self.senders.remove(sender);
        self.marked.remove(sender);
        self.resumed.remove(sender);
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

    #[test]
    fn t40_epochs_from_the_future_are_refused_and_move_nothing() {
        let now = 1_700_000_000_000u64;
        let mut g = ReplayGuard::new();
        g.check_and_update_at(1u64, now - 60_000, 10, now).unwrap();
        let before = *g.window(&1).unwrap();
        // Just inside the bound: accepted (a sender whose clock is 5 minutes fast).
        assert_eq!(check_epoch_skew(now + MAX_FUTURE_SKEW_MS, now), Ok(()));
        // Beyond it, and the attack of the issue (a huge epoch): refused, window unchanged.
        for epoch in [now + MAX_FUTURE_SKEW_MS + 1, u64::MAX] {
            assert_eq!(
                g.check_and_update_at(1, epoch, 1, now),
                Err(Replay::FutureEpoch { epoch, now_ms: now })
            );
        }
        assert_eq!(*g.window(&1).unwrap(), before);
        // An unknown sender with a future epoch gets no window at all.
        assert!(g.check_and_update_at(2, u64::MAX, 1, now).is_err());
        assert!(g.window(&2).is_none());
        // The real sender goes on.
        g.check_and_update_at(1, now - 60_000, 11, now).unwrap();
    }

    #[test]
    fn t41_a_resumed_guard_refuses_what_was_seen_before_the_restart() {
        let mut g = ReplayGuard::new();
        for c in 1..=100 {
            g.check_and_update(1u64, 5, c).unwrap();
        }
        let marks = g.marks();
        assert_eq!(
            marks,
            vec![(
                1,
                HighWater {
                    epoch: 5,
                    counter: 100,
                    margin: MIN_RESUME_MARGIN
                }
            )]
        );
        // Accepted after the save, before the "restart": counters 101..=150.
        for c in 101..=150 {
            g.check_and_update(1, 5, c).unwrap();
        }
        let mut r = ReplayGuard::resume(marks);
        // Everything seen before the save, and after it up to the margin, is refused.
        for c in [1, 50, 100, 101, 150, 100 + MIN_RESUME_MARGIN] {
            assert!(r.check_and_update(1, 5, c).is_err(), "counter {c}");
        }
        assert_eq!(r.check_and_update(1, 4, 1000), Err(Replay::StaleEpoch(4)));
        // The sender's next packets beyond the margin, and a new epoch, are accepted.
        r.check_and_update(1, 5, 101 + MIN_RESUME_MARGIN).unwrap();
        r.check_and_update(1, 6, 1).unwrap();
        // Other senders start fresh.
        r.check_and_update(2, 5, 1).unwrap();
    }

    #[test]
    fn t42_margins_follow_the_sender_rate_within_bounds() {
        let mut g = ReplayGuard::new();
        g.check_and_update(1u64, 5, 10).unwrap();
        assert_eq!(g.marks()[0].1.margin, MIN_RESUME_MARGIN);
        g.check_and_update(1, 5, 1010).unwrap();
        assert_eq!(
            g.marks()[0].1,
            HighWater {
                epoch: 5,
                counter: 1010,
                margin: 2000
            }
        );
        g.check_and_update(1, 5, 1_000_000).unwrap();
        assert_eq!(g.marks()[0].1.margin, MAX_RESUME_MARGIN);
        // A new epoch counts from zero.
        g.check_and_update(1, 6, 3).unwrap();
        assert_eq!(
            g.marks()[0].1,
            HighWater {
                epoch: 6,
                counter: 3,
                margin: MIN_RESUME_MARGIN
            }
        );
    }

    #[test]
    fn t43_a_resumed_sender_not_heard_from_keeps_its_saved_mark() {
        let saved = HighWater {
            epoch: 5,
            counter: 100,
            margin: 300,
        };
        let mut r = ReplayGuard::resume([(1u64, saved)]);
        // Saved again and again while the sender is silent (or only replayed): unchanged,
        // so a second restart still refuses the same packets.
        assert!(r.check_and_update(1, 5, 399).is_err());
        assert_eq!(r.marks(), vec![(1, saved)]);
        assert_eq!(r.marks(), vec![(1, saved)]);
        r.check_and_update(1, 5, 401).unwrap();
        assert_eq!(r.marks()[0].1.counter, 401);
        r.forget(&1);
        assert!(r.marks().is_empty());
    }
}
