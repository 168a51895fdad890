//! Throughput and latency summaries, and the medians over runs that the tables report.

use std::time::Duration;

/// The result of one workload run.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Successful operations.
    pub ops: usize,
    /// Failed operations.
    pub errors: usize,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Median latency of successful operations.
    pub p50: Duration,
    /// 99th percentile latency of successful operations.
    pub p99: Duration,
}

impl Summary {
    /// Summarises per-operation latencies of successful ops.
    pub fn new(mut latencies: Vec<Duration>, errors: usize, elapsed: Duration) -> Summary {
        latencies.sort();
        let pick = |q: f64| {
            if latencies.is_empty() {
                Duration::ZERO
            } else {
                latencies[((latencies.len() as f64 - 1.0) * q).round() as usize]
            }
        };
        Summary {
            ops: latencies.len(),
            errors,
            elapsed,
            p50: pick(0.50),
            p99: pick(0.99),
        }
    }

    /// Successful operations per second of wall time.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A duration in microseconds, the unit of the latency tables.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The median of `xs` (the upper one of an even count): the figure of a benchmark over its
/// runs, robust to one run that other load on the machine disturbed.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// The median of one field over the runs' samples.
pub fn median_of<S>(samples: &[S], field: impl Fn(&S) -> f64) -> f64 {
    median(samples.iter().map(field).collect())
}

/// Median absolute deviation: the run-to-run spread of one figure.
pub fn mad(xs: &[f64]) -> f64 {
    let m = median(xs.to_vec());
    median(xs.iter().map(|x| (x - m).abs()).collect())
}

/// Bytes in each ping-pong message of the latency benchmarks (netperf TCP_RR style).
pub const RR_MESSAGE: usize = 64;

/// `round_trips` 64-byte messages echoed one at a time over `conn`, after a warm-up of a
/// tenth as many (at least 100): the request/response latency of the path under test.
pub fn ping_pong(conn: &mut std::net::TcpStream, round_trips: usize) -> anyhow::Result<Summary> {
    use std::io::{Read, Write};
    let msg = [0x42u8; RR_MESSAGE];
    let mut back = [0u8; RR_MESSAGE];
    let mut one = |conn: &mut std::net::TcpStream| -> anyhow::Result<()> {
        conn.write_all(&msg)?;
        conn.read_exact(&mut back)?;
        Ok(())
    };
    for _ in 0..(round_trips / 10).max(100) {
        one(conn)?;
    }
    let mut lat = Vec::with_capacity(round_trips);
    let start = std::time::Instant::now();
    for _ in 0..round_trips {
        let t = std::time::Instant::now();
        one(conn)?;
        lat.push(t.elapsed());
    }
    Ok(Summary::new(lat, 0, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let lat: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::new(lat, 0, Duration::from_secs(2));
        assert_eq!(s.p50, Duration::from_millis(51));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.ops_per_sec(), 50.0);
    }

    #[test]
    fn median_takes_the_upper_middle_and_mad_the_spread_around_it() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median_of(&[(1, 5.0), (2, 7.0), (3, 6.0)], |s| s.1), 6.0);
        // Deviations from 3: 2, 1, 0, 1, 7 -> median 1; the outlier does not move it.
        assert_eq!(mad(&[1.0, 2.0, 3.0, 4.0, 10.0]), 1.0);
        assert_eq!(micros(Duration::from_millis(2)), 2000.0);
    }
}
