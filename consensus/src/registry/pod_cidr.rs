//! Pod CIDR allocation: the cluster pool is cut into equal blocks, one per node.
//!
//! The lowest free block is chosen so that allocation is deterministic on every node.

use ipnet::Ipv4Net;

use super::RegistryError;

/// Checks that the pool can be split into blocks of `prefix`.
pub fn validate(pool: Ipv4Net, prefix: u8) -> Result<(), RegistryError> {
    if prefix > 30 {
        return Err(RegistryError::InvalidClusterConfig(format!(
            "node CIDR size /{prefix} is too small for endpoints; use /30 or larger (e.g. /24)"
        )));
    }
    if prefix < pool.prefix_len() {
        return Err(RegistryError::InvalidClusterConfig(format!(
            "node CIDR size /{prefix} is larger than the pod pool {pool}"
        )));
    }
    if pool != pool.trunc() {
        return Err(RegistryError::InvalidClusterConfig(format!(
            "pod pool {pool} has host bits set; did you mean {}?",
            pool.trunc()
        )));
    }
    Ok(())
}

/// Returns the lowest block of `pool` with prefix `prefix` that overlaps no used block.
pub fn allocate(
    pool: Ipv4Net,
    prefix: u8,
    used: impl Iterator<Item = Ipv4Net>,
) -> Result<Ipv4Net, RegistryError> {
    let used: Vec<Ipv4Net> = used.collect();
    let exhausted = || RegistryError::PodCidrExhausted {
        pool: pool.to_string(),
        prefix,
    };
    let blocks = pool.subnets(prefix).map_err(|_| exhausted())?;
    for block in blocks {
        if !used.iter().any(|u| u.contains(&block) || block.contains(u)) {
            return Ok(block);
        }
    }
    Err(exhausted())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn lowest_free_block_is_chosen() {
        let pool = net("10.128.0.0/9");
        assert_eq!(
            allocate(pool, 24, [].into_iter()).unwrap(),
            net("10.128.0.0/24")
        );
        let used = [net("10.128.0.0/24"), net("10.128.2.0/24")];
        assert_eq!(
            allocate(pool, 24, used.into_iter()).unwrap(),
            net("10.128.1.0/24")
        );
    }

    #[test]
    fn an_exhausted_pool_is_an_error() {
        let pool = net("10.0.0.0/23");
        let used = [net("10.0.0.0/24"), net("10.0.1.0/24")];
        let err = allocate(pool, 24, used.into_iter()).unwrap_err();
        assert!(err.to_string().contains("no free /24"), "{err}");
    }

    #[test]
    fn bad_pools_are_refused() {
        assert!(validate(net("10.128.0.0/9"), 24).is_ok());
        assert!(validate(net("10.128.0.0/9"), 8).is_err());
        assert!(validate(net("10.128.0.0/9"), 31).is_err());
        assert!(validate(net("10.128.0.1/9"), 24).is_err());
    }
}
