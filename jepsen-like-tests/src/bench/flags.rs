//! Value parsers shared by the benchmarks' flags (each benchmark derives its own `Args`).

/// A whole number; `_` may group digits, as in `20_000`.
pub fn number(s: &str) -> Result<usize, String> {
    s.replace('_', "")
        .parse()
        .map_err(|e| format!("{s:?} is not a whole number: {e}"))
}

/// A count of at least 1 (runs, seconds, round trips, clients ...), as [`number`].
pub fn count<T: TryFrom<usize>>(s: &str) -> Result<T, String> {
    let n = number(s)?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    T::try_from(n).map_err(|_| format!("{n} is too large"))
}

/// `A` parsed from `args` as if they followed a benchmark's name on the command line.
#[cfg(test)]
pub fn parse<A: clap::Args + clap::FromArgMatches>(args: &[&str]) -> Result<A, clap::Error> {
    let cmd = A::augment_args(clap::Command::new("bench").no_binary_name(true));
    A::from_arg_matches(&cmd.try_get_matches_from(args)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_at_least_one_and_may_group_digits() {
        assert_eq!(count::<usize>("20_000"), Ok(20_000));
        assert_eq!(count::<u32>("5"), Ok(5));
        assert!(count::<usize>("0").is_err());
        assert!(count::<usize>("-1").is_err());
        assert!(count::<usize>("ten").is_err());
        assert!(count::<u32>("5000000000").is_err());
    }
}
