//! Network faults as an nftables ruleset on the underlay bridge.
//!
//! The lab keeps the wanted faults (cut hosts, a partition) as plain data and renders the whole
//! ruleset from it on every change, applied as one nft transaction. Rendering is pure, so it is
//! unit-tested without a kernel, and there is never a half-applied fault: `heal` after any
//! sequence of cuts and partitions yields exactly the rules that should remain.
//!
//! Rules sit in the `bridge` family's forward hook of the underlay namespace: they drop frames
//! between bridge ports, ARP included, while every host keeps its link and addresses, as when a
//! switch or a firewall in the path fails.

use std::collections::BTreeSet;
use std::fmt::Write;

use anyhow::bail;

/// The nftables table the lab owns in the underlay namespace.
pub(crate) const TABLE: &str = "membrane_lab";

/// The faults in force. Hosts are 1-based indices.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Faults {
    /// Hosts cut off from everyone.
    cut: BTreeSet<usize>,
    /// Group of each host (index `i - 1`), when a partition is in force.
    groups: Option<Vec<usize>>,
}

impl Faults {
    pub fn cut(&mut self, host: usize) {
        self.cut.insert(host);
    }

    pub fn heal(&mut self, host: usize) {
        self.cut.remove(&host);
    }

    pub fn heal_all(&mut self) {
        *self = Faults::default();
    }

    /// Replaces any partition by `groups`, which must place each of the `hosts` hosts in
    /// exactly one group: a host left out is far more often a bug in a test than an intent.
    pub fn partition(&mut self, hosts: usize, groups: &[&[usize]]) -> anyhow::Result<()> {
        let mut group_of = vec![None; hosts];
        for (g, members) in groups.iter().enumerate() {
            for &h in members.iter() {
                let Some(slot) = h.checked_sub(1).and_then(|i| group_of.get_mut(i)) else {
                    bail!("partition names host {h}, but the lab has hosts 1..={hosts}");
                };
                if slot.is_some() {
                    bail!("partition names host {h} twice");
                }
                *slot = Some(g);
            }
        }
        let mut assigned = Vec::with_capacity(hosts);
        for (i, g) in group_of.into_iter().enumerate() {
            let Some(g) = g else {
                bail!("partition leaves out host {}; put it in a group", i + 1)
            };
            assigned.push(g);
        }
        self.groups = Some(assigned);
        Ok(())
    }

    /// Ends the partition, leaving cut hosts cut.
    pub fn heal_partition(&mut self) {
        self.groups = None;
    }

    /// The nft script that replaces the lab's table with these faults (and only removes it
    /// when there are none). `ports[i - 1]` is host i's bridge port.
    pub fn ruleset(&self, ports: &[&str]) -> String {
        // Declaring then deleting makes the delete valid whether or not the table exists; the
        // whole script is one transaction.
        let mut s = format!("table bridge {TABLE} {{}}\ndelete table bridge {TABLE}\n");
        let mut rules = Vec::new();
        for &h in &self.cut {
            if let Some(port) = h.checked_sub(1).and_then(|i| ports.get(i)) {
                rules.push(format!("iifname \"{port}\" drop"));
                rules.push(format!("oifname \"{port}\" drop"));
            }
        }
        if let Some(groups) = &self.groups {
            for (i, (from, g)) in ports.iter().zip(groups).enumerate() {
                let others: Vec<String> = ports
                    .iter()
                    .zip(groups)
                    .enumerate()
                    .filter(|&(j, (_, h))| j != i && h != g)
                    .map(|(_, (to, _))| format!("\"{to}\""))
                    .collect();
                if !others.is_empty() {
                    rules.push(format!(
                        "iifname \"{from}\" oifname {{ {} }} drop",
                        others.join(", ")
                    ));
                }
            }
        }
        if rules.is_empty() {
            return s;
        }
        let _ = writeln!(s, "table bridge {TABLE} {{");
        let _ = writeln!(s, "  chain faults {{");
        let _ = writeln!(s, "    type filter hook forward priority 0; policy accept;");
        for r in rules {
            let _ = writeln!(s, "    {r}");
        }
        let _ = writeln!(s, "  }}\n}}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: [&str; 3] = ["h1", "h2", "h3"];

    #[test]
    fn no_faults_only_removes_the_table() {
        let s = Faults::default().ruleset(&PORTS);
        assert_eq!(
            s,
            "table bridge membrane_lab {}\ndelete table bridge membrane_lab\n"
        );
    }

    #[test]
    fn cut_drops_both_directions_and_heal_removes_it() {
        let mut f = Faults::default();
        f.cut(2);
        let s = f.ruleset(&PORTS);
        assert!(s.contains("iifname \"h2\" drop"), "{s}");
        assert!(s.contains("oifname \"h2\" drop"), "{s}");
        assert!(!s.contains("\"h1\""), "{s}");
        f.heal(2);
        assert_eq!(f, Faults::default());
    }

    #[test]
    fn partition_drops_across_groups_only() {
        let mut f = Faults::default();
        f.partition(3, &[&[1], &[2, 3]]).expect("valid partition");
        let s = f.ruleset(&PORTS);
        assert!(
            s.contains("iifname \"h1\" oifname { \"h2\", \"h3\" } drop"),
            "{s}"
        );
        assert!(s.contains("iifname \"h2\" oifname { \"h1\" } drop"), "{s}");
        assert!(s.contains("iifname \"h3\" oifname { \"h1\" } drop"), "{s}");
        f.heal_partition();
        assert_eq!(f.ruleset(&PORTS), Faults::default().ruleset(&PORTS));
    }

    #[test]
    fn partition_rejects_bad_groups() {
        let mut f = Faults::default();
        assert!(f.partition(3, &[&[1], &[2]]).is_err(), "host 3 left out");
        assert!(f.partition(3, &[&[1, 2], &[2, 3]]).is_err(), "host 2 twice");
        assert!(f.partition(3, &[&[1, 2, 3, 4]]).is_err(), "no host 4");
        assert!(f.partition(3, &[&[0, 1, 2, 3]]).is_err(), "no host 0");
        assert_eq!(f, Faults::default(), "a rejected partition changes nothing");
    }
}
