//! Turning a map's current contents into the desired ones: every wing that keeps a BPF map
//! in step with the registry computes its desired state (pure) and writes only the difference.

use std::collections::BTreeMap;

/// What to write and what to delete so that `current` becomes `desired`.
pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let upserts = desired
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removals = current
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    (upserts, removals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_writes_only_what_changed() {
        let cur: BTreeMap<u32, u32> = [(1, 1), (2, 2), (3, 3)].into_iter().collect();
        let want: BTreeMap<u32, u32> = [(1, 1), (2, 20), (4, 4)].into_iter().collect();
        let (up, rm) = diff(&cur, &want);
        assert_eq!(up, vec![(2, 20), (4, 4)]);
        assert_eq!(rm, vec![3]);
    }
}
