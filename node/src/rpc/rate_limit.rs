//! Failed joins per source address, in a fixed window: pure, the time is passed in.
//!
//! A join that fails costs the admitting node a CSR parse and a hash compare; without a
//! bound, anyone who can reach the RPC port can try token secrets at line rate. After
//! `max_failures` failures within `window` from one address, further joins from it are
//! refused until the window that started with its first failure has passed. Successful
//! joins do not count. The table is bounded: when it is full, expired entries go first,
//! then the oldest window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How many failed joins an address may make per window. `max_failures == 0` turns the
/// limit off (the lab uses it to throw many bad tokens at one node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_failures: u32,
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_failures: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// Addresses remembered at once; beyond it the oldest window is forgotten.
pub const MAX_TRACKED: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Entry {
    since: Instant,
    failures: u32,
}

/// Failure counts per source address.
#[derive(Debug)]
pub struct FailureLimiter {
    limits: Limits,
    entries: HashMap<IpAddr, Entry>,
}

impl FailureLimiter {
    pub fn new(limits: Limits) -> Self {
        FailureLimiter {
            limits,
            entries: HashMap::new(),
        }
    }

    /// `Err(retry_after)` when `addr` has used up its failures for the current window.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.limits.max_failures == 0 {
            return Ok(());
        }
        match self.entries.get(&addr) {
            Some(e) if now.duration_since(e.since) < self.limits.window => {
                if e.failures >= self.limits.max_failures {
                    Err(self.limits.window - now.duration_since(e.since))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts one failed join from `addr`.
    pub fn record_failure(&mut self, addr: IpAddr, now: Instant) {
        if self.limits.max_failures == 0 {
            return;
        }
        let window = self.limits.window;
        if !self.entries.contains_key(&addr) && self.entries.len() >= MAX_TRACKED {
            self.entries
                .retain(|_, e| now.duration_since(e.since) < window);
            if self.entries.len() >= MAX_TRACKED {
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.since)
                    .map(|(a, _)| *a)
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        let e = self.entries.entry(addr).or_insert(Entry {
            since: now,
            failures: 0,
        });
        if now.duration_since(e.since) >= window {
            *e = Entry {
                since: now,
                failures: 0,
            };
        }
        e.failures = e.failures.saturating_add(1);
    }

    /// Addresses currently remembered (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn limiter(max: u32, secs: u64) -> FailureLimiter {
        FailureLimiter::new(Limits {
            max_failures: max,
            window: Duration::from_secs(secs),
        })
    }

    #[test]
    fn t10_refuses_after_max_failures_in_the_window() {
        let mut l = limiter(5, 60);
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(
                l.check(ip(1), t0).is_ok(),
                "failure {i} must still be allowed"
            );
            l.record_failure(ip(1), t0);
        }
        let wait = l.check(ip(1), t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
    }

    #[test]
    fn t11_other_addresses_are_not_affected() {
        let mut l = limiter(2, 60);
        let t0 = Instant::now();
        l.record_failure(ip(1), t0);
        l.record_failure(ip(1), t0);
        assert!(l.check(ip(1), t0).is_err());
        assert!(l.check(ip(2), t0).is_ok());
    }

    #[test]
    fn t12_the_window_expires() {
        let mut l = limiter(2, 60);
        let t0 = Instant::now();
        l.record_failure(ip(1), t0);
        l.record_failure(ip(1), t0 + Duration::from_secs(1));
        assert!(l.check(ip(1), t0 + Duration::from_secs(59)).is_err());
        assert!(l.check(ip(1), t0 + Duration::from_secs(60)).is_ok());
        // A failure after the window starts a new one with a count of 1.
        l.record_failure(ip(1), t0 + Duration::from_secs(61));
        assert!(l.check(ip(1), t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn t13_zero_turns_the_limit_off() {
        let mut l = limiter(0, 60);
        let t0 = Instant::now();
        for _ in 0..1000 {
            l.record_failure(ip(1), t0);
        }
        assert!(l.check(ip(1), t0).is_ok());
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn t20_the_table_is_bounded() {
        let mut l = limiter(1, 60);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.record_failure(a, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(l.tracked(), MAX_TRACKED);
        // The newest address is still limited; the very first was forgotten.
        let newest = IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + MAX_TRACKED as u32 + 99,
        ));
        assert!(l.check(newest, t0 + Duration::from_secs(1)).is_err());
        assert!(l
            .check(IpAddr::from([10, 0, 0, 0]), t0 + Duration::from_secs(1))
            .is_ok());
    }
}
