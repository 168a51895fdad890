//! The tables: medians per rule count and setup, and what the rules add to each side's own
//! baseline.

use super::workload::Sample;
use super::Kind;

/// Prints both tables and the noise line; `med[count][kind]`, `counts[0]` is 0 (no rules).
pub(super) fn print_tables(
    counts: &[usize],
    kinds: &[Kind],
    med: &[Vec<Sample>],
    entries: &[Option<usize>],
    noise: (f64, f64),
) {
    let base = &med[0];
    println!("\nMedians over runs. conn: connect + one 64-byte request/response + close, back to back; rr: 64-byte ping-pong on one connection. Added: vs the same side with no policy / no rules.\n");
    println!("| rules | setup | conn/s | conn p50 | conn p99 | rr p50 | rr p99 | added conn p50 | added rr p50 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (ci, &n) in counts.iter().enumerate() {
        for (ki, kind) in kinds.iter().enumerate() {
            if n == 0 && *kind == Kind::IptablesNoCt {
                continue;
            }
            let s = med[ci][ki];
            let b = base[ki];
            let label = if n == 0 {
                match kind {
                    Kind::Membrane => "Membrane, no policy".to_string(),
                    _ => "plain bridge, no rules".to_string(),
                }
            } else {
                kind.name().to_string()
            };
            let (ac, ar) = if n == 0 {
                ("-".to_string(), "-".to_string())
            } else {
                (
                    format!("{:+.1} us", s.conn_p50_us - b.conn_p50_us),
                    format!("{:+.1} us", s.rr_p50_us - b.rr_p50_us),
                )
            };
            println!(
                "| {} | {label} | {:.0} | {:.1} us | {:.1} us | {:.1} us | {:.1} us | {ac} | {ar} |",
                fmt_count(n),
                s.conn_per_s,
                s.conn_p50_us,
                s.conn_p99_us,
                s.rr_p50_us,
                s.rr_p99_us
            );
        }
    }

    println!("\n| rules | policy map entries | Membrane conn/s vs no policy | iptables (ct) conn/s vs no rules | added conn p50: Membrane / iptables (ct) / ratio | added rr p50: Membrane / iptables (no shortcut) / ratio |");
    println!("|---|---|---|---|---|---|");
    for (ci, &n) in counts.iter().enumerate().skip(1) {
        let m = med[ci][0];
        let ct = med[ci][1];
        let no = med[ci][2];
        let m_conn = m.conn_p50_us - base[0].conn_p50_us;
        let i_conn = ct.conn_p50_us - base[1].conn_p50_us;
        let m_rr = m.rr_p50_us - base[0].rr_p50_us;
        let i_rr = no.rr_p50_us - base[2].rr_p50_us;
        println!(
            "| {} | {} | {:.2}x | {:.2}x | {m_conn:+.1} / {i_conn:+.1} us / {} | {m_rr:+.1} / {i_rr:+.1} us / {} |",
            fmt_count(n),
            entries[ci].map_or("-".into(), |e| e.to_string()),
            m.conn_per_s / base[0].conn_per_s,
            ct.conn_per_s / base[1].conn_per_s,
            ratio(i_conn, m_conn, noise.0),
            ratio(i_rr, m_rr, noise.1),
        );
    }
    println!(
        "\nRun-to-run noise of Membrane's no-policy figures (median absolute deviation): conn p50 {:.1} us, rr p50 {:.1} us; a ratio '>Nx' means Membrane's added latency is within that noise.",
        noise.0, noise.1
    );
    if counts.len() > 2 {
        let first = med[1][0].conn_per_s;
        let last = med[counts.len() - 1][0].conn_per_s;
        println!(
            "\nMembrane conn/s at {} rules vs {} rules: {:+.1}% (goal: within 10%)",
            fmt_count(counts[counts.len() - 1]),
            fmt_count(counts[1]),
            (last / first - 1.0) * 100.0
        );
    }
}

/// iptables' added latency over Membrane's. A Membrane figure inside the run-to-run noise
/// (`noise`, at least 0.5 us) is no divisor: the ratio is then shown as a lower bound,
/// iptables' added latency over the noise.
fn ratio(iptables: f64, membrane: f64, noise: f64) -> String {
    let floor = noise.max(0.5);
    if iptables <= floor {
        "-".into()
    } else if membrane < floor {
        format!(">{:.0}x", iptables / floor)
    } else {
        format!("{:.1}x", iptables / membrane)
    }
}

/// A rule count as the tables write it (10,000).
fn fmt_count(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{},000", n / 1000)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_inside_the_noise_is_a_lower_bound() {
        assert_eq!(ratio(10.0, 2.0, 0.1), "5.0x");
        assert_eq!(ratio(10.0, 0.2, 0.1), ">20x");
        assert_eq!(ratio(10.0, 1.0, 2.0), ">5x");
        assert_eq!(ratio(0.4, 0.1, 0.1), "-");
    }

    #[test]
    fn rule_counts_group_thousands() {
        assert_eq!(fmt_count(10), "10");
        assert_eq!(fmt_count(10_000), "10,000");
        assert_eq!(fmt_count(1500), "1500");
    }
}
