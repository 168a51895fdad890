//! The tunnel's replay window, RFC 6479 style: a ring of 64-bit blocks, of which all but one
//! are the window, so that moving forward clears whole blocks instead of shifting bits.
//!
//! With 128 blocks the window covers [`WINDOW_SIZE`] = 127 * 64 = 8,128 counters below the
//! highest one seen, the size wireguard-go uses. A counter is accepted once; a counter more
//! than `WINDOW_SIZE` below the highest seen is refused as too old, whether it was seen or
//! not. A jump forward of any size is accepted (the blocks it skips are cleared).
//!
//! The check is split in two so that a receiver can refuse a replay before spending a
//! decryption on it, and mark the counter only once the packet has authenticated: a forged
//! packet must never move the window. [`ReplayWindow::check`] does not change anything;
//! [`ReplayWindow::update`] repeats the check and marks the counter, so two threads that both
//! passed `check` for the same counter cannot both succeed in `update`.

const BLOCK_BITS: u64 = 64;
const RING_BLOCKS: usize = 128;
const BLOCK_MASK: u64 = RING_BLOCKS as u64 - 1;

/// How many counters below the highest one seen are still accepted (once each).
pub const WINDOW_SIZE: u64 = (RING_BLOCKS as u64 - 1) * BLOCK_BITS;

/// Which counters of one receive session were seen.
#[derive(Clone)]
pub struct ReplayWindow {
    /// The highest counter marked so far (meaningless while `ring` is all zero and nothing
    /// was marked: counter 0 is then simply unmarked).
    last: u64,
    ring: [u64; RING_BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// An empty window: every counter is new.
    pub fn new() -> Self {
        ReplayWindow {
            last: 0,
            ring: [0; RING_BLOCKS],
        }
    }

    /// A window that refuses every counter up to and including `last`: for a session
    /// derived again after it was erased, which must not accept what it accepted before.
    pub fn after(last: u64) -> Self {
        let mut w = ReplayWindow {
            last,
            ring: [u64::MAX; RING_BLOCKS],
        };
        // In the block of `last`, only the bits up to it are "seen".
        let (block, bit) = Self::position(last);
        w.ring[block] = bit | (bit - 1);
        w
    }

    /// The highest counter marked so far (0 when none).
    pub fn last(&self) -> u64 {
        self.last
    }

    fn position(counter: u64) -> (usize, u64) {
        let block = ((counter / BLOCK_BITS) & BLOCK_MASK) as usize;
        (block, 1u64 << (counter % BLOCK_BITS))
    }

    /// Whether `counter` would be accepted now. Changes nothing.
    pub fn check(&self, counter: u64) -> bool {
        if counter > self.last {
            return true;
        }
        if self.last - counter > WINDOW_SIZE {
            return false;
        }
        let (block, bit) = Self::position(counter);
        self.ring[block] & bit == 0
    }

    /// Marks `counter` as seen. Returns false (and changes nothing) when it was already seen
    /// or is too old.
    pub fn update(&mut self, counter: u64) -> bool {
        if counter > self.last {
            let current = self.last / BLOCK_BITS;
            let target = counter / BLOCK_BITS;
            // Clear the blocks the window moves over; after a full lap every block is stale.
            let clear = (target - current).min(RING_BLOCKS as u64);
            for i in 1..=clear {
                self.ring[((current + i) & BLOCK_MASK) as usize] = 0;
            }
            self.last = counter;
        } else if self.last - counter > WINDOW_SIZE {
            return false;
        }
        let (block, bit) = Self::position(counter);
        if self.ring[block] & bit != 0 {
            return false;
        }
        self.ring[block] |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_wireguard_sized() {
        assert_eq!(WINDOW_SIZE, 8128);
    }

    #[test]
    fn each_counter_once_in_any_order() {
        let mut w = ReplayWindow::new();
        for c in [0u64, 2, 1, 5, 3, 4, 100, 99, 64, 63, 128] {
            assert!(w.check(c), "{c}");
            assert!(w.update(c), "{c}");
            assert!(!w.check(c), "{c} again");
            assert!(!w.update(c), "{c} again");
        }
        assert_eq!(w.last(), 128);
    }

    #[test]
    fn counter_zero_first_and_again() {
        let mut w = ReplayWindow::new();
        assert!(w.update(0));
        assert!(!w.update(0));
        assert!(w.update(1));
        assert!(!w.update(0));
    }

    #[test]
    fn edge_of_the_window() {
        let mut w = ReplayWindow::new();
        let top = 20_000u64;
        assert!(w.update(top));
        // Exactly WINDOW_SIZE below the top is still inside; one more is too old.
        assert!(w.check(top - WINDOW_SIZE));
        assert!(w.update(top - WINDOW_SIZE));
        assert!(!w.update(top - WINDOW_SIZE));
        assert!(!w.check(top - WINDOW_SIZE - 1));
        assert!(!w.update(top - WINDOW_SIZE - 1));
        // Too old is refused even if never seen, and refusing changes nothing.
        assert!(!w.update(0));
        assert_eq!(w.last(), top);
        assert!(w.update(top - 1));
    }

    #[test]
    fn all_counters_of_a_full_window_then_a_slide() {
        let mut w = ReplayWindow::new();
        for c in 0..=WINDOW_SIZE {
            assert!(w.update(c), "{c}");
        }
        for c in 0..=WINDOW_SIZE {
            assert!(!w.update(c), "{c} replayed");
        }
        // Slide by one block: the counters of the block that fell out stay refused (too old),
        // the new ones are fresh even though their ring slot was used before.
        for c in WINDOW_SIZE + 1..WINDOW_SIZE + 65 {
            assert!(w.update(c), "{c}");
        }
        assert!(!w.update(0));
        assert!(!w.update(64));
    }

    #[test]
    fn after_refuses_up_to_last_only() {
        for last in [0u64, 1, 63, 64, 100, 20_000] {
            let mut w = ReplayWindow::after(last);
            for c in last.saturating_sub(WINDOW_SIZE + 10)..=last {
                assert!(!w.check(c), "{c} <= {last}");
                assert!(!w.update(c), "{c} <= {last}");
            }
            for c in last + 1..last + 200 {
                assert!(w.update(c), "{c} > {last}");
            }
        }
    }

    #[test]
    fn big_jump_clears_everything() {
        let mut w = ReplayWindow::new();
        for c in 0..1000 {
            assert!(w.update(c));
        }
        let far = 1u64 << 40;
        assert!(w.update(far));
        // Everything within the window below `far` is new, whichever ring slot it maps to.
        for c in far - WINDOW_SIZE..far {
            assert!(w.check(c), "{c}");
        }
        assert!(!w.check(999));
        assert!(w.update(u64::MAX));
        assert!(!w.update(u64::MAX));
        assert!(w.update(u64::MAX - WINDOW_SIZE));
    }

    #[test]
    fn matches_a_reference_set() {
        // A simple model: a set of seen counters and the highest one.
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut top = 0u64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly near the top, sometimes a jump forward or far back.
            let c = match x % 16 {
                0 => top + (x >> 8) % 20_000,
                1 => top.saturating_sub((x >> 8) % 20_000),
                _ => (top + 50).saturating_sub((x >> 8) % 9_000),
            };
            let want = if seen.is_empty() || c > top {
                true
            } else {
                top - c <= WINDOW_SIZE && !seen.contains(&c)
            };
            assert_eq!(w.check(c), want, "check {c} top {top}");
            assert_eq!(w.update(c), want, "update {c} top {top}");
            if want {
                seen.insert(c);
                top = top.max(c);
            }
        }
    }
}
