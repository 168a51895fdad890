//! When a node certificate is renewed (pure): once a third of its lifetime is left.
//!
//! With the default 30-day certificates that is 10 days before expiry: time for several
//! attempts, and for an operator to notice (`membrane node certs`) if none succeeds.

/// What to do about this node's certificate at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Renew now.
    Due,
    /// Look again at `at` (unix seconds).
    NotYet { at: i64 },
}

/// Renew once at most a third of the lifetime `[not_before, not_after]` is left. A
/// certificate whose validity is empty or backwards is due at once: it is unusable anyway.
pub fn decide(not_before: i64, not_after: i64, now: i64) -> Renewal {
    let lifetime = not_after.saturating_sub(not_before);
    if lifetime <= 0 {
        return Renewal::Due;
    }
    let at = not_after - lifetime / 3;
    if now >= at {
        Renewal::Due
    } else {
        Renewal::NotYet { at }
    }
}

/// How much later than the others node `node_id` renews, in seconds: a minute per id
/// (mod 60). A renewal restarts the agent; voters whose certificates were issued together
/// (a cluster formed in one go) would otherwise restart together and lose the quorum for a
/// moment.
pub fn stagger_secs(node_id: u64) -> i64 {
    (node_id % 60) as i64 * 60
}

/// How long to sleep before looking again, in seconds: until `at`, but at most `max` (the
/// clock may jump, a renewal may be forced) and at least 1.
pub fn sleep_secs(decision: Renewal, now: i64, max: u64) -> u64 {
    match decision {
        Renewal::Due => 1,
        Renewal::NotYet { at } => (at.saturating_sub(now).max(1) as u64).min(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn t10_renews_when_a_third_of_the_lifetime_is_left() {
        let nb = 1_000_000;
        let na = nb + 30 * DAY;
        assert_eq!(decide(nb, na, nb), Renewal::NotYet { at: na - 10 * DAY });
        assert_eq!(
            decide(nb, na, na - 10 * DAY - 1),
            Renewal::NotYet { at: na - 10 * DAY }
        );
        assert_eq!(decide(nb, na, na - 10 * DAY), Renewal::Due);
        assert_eq!(decide(nb, na, na + DAY), Renewal::Due, "expired: renew");
    }

    #[test]
    fn t11_a_one_year_certificate_of_the_old_code_renews_four_months_early() {
        let nb = 0;
        let na = 365 * DAY;
        assert_eq!(decide(nb, na, 0), Renewal::NotYet { at: na - na / 3 });
    }

    #[test]
    fn t12_an_empty_or_backwards_validity_is_due() {
        assert_eq!(decide(5, 5, 0), Renewal::Due);
        assert_eq!(decide(9, 5, 0), Renewal::Due);
        // Absurd bounds from a hostile certificate do not overflow.
        assert!(matches!(
            decide(i64::MIN, i64::MAX, 0),
            Renewal::NotYet { .. }
        ));
    }

    #[test]
    fn t13_nodes_renew_a_minute_apart() {
        assert_eq!(stagger_secs(0), 0);
        assert_eq!(stagger_secs(2) - stagger_secs(1), 60);
        assert_eq!(stagger_secs(61), stagger_secs(1));
        // Staggering delays by at most an hour of the 10 days left.
        assert!((0..=3600).contains(&stagger_secs(u64::MAX)));
    }

    #[test]
    fn t20_sleeps_until_due_but_never_longer_than_the_cap() {
        assert_eq!(sleep_secs(Renewal::NotYet { at: 100 }, 40, 3600), 60);
        assert_eq!(sleep_secs(Renewal::NotYet { at: 100_000 }, 0, 3600), 3600);
        assert_eq!(sleep_secs(Renewal::NotYet { at: 10 }, 40, 3600), 1);
        assert_eq!(sleep_secs(Renewal::Due, 40, 3600), 1);
    }
}
