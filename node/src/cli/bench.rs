//! `membrane bench cipher`: ChaCha20-Poly1305 sealing on one core, side by side in one run:
//! ring, RustCrypto's chacha20poly1305, the tunnel's whole seal path (header, counter,
//! session lookup) over the default cipher, and `openssl speed -evp chacha20-poly1305` as the
//! outside reference. The figures choose the tunnel's default `CipherKind` and are the raw
//! cipher limit that `scripts/bench.sh tunnel` compares the encrypted overlay with.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use membrane_crypto::tunnel::{CipherKind, EpochSecret, Tunnel};

#[derive(Parser, Debug)]
#[command(
    name = "membrane bench cipher",
    about = "ChaCha20-Poly1305 seal rate on one core"
)]
struct CipherArgs {
    /// Packet sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1420,64")]
    sizes: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds, interleaved across the implementations; the median is printed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The openssl binary (skipped, and said so, if it cannot be run).
    #[arg(long, default_value = "openssl")]
    openssl: String,
}

/// One column of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Raw(CipherKind),
    Tunnel,
    Openssl,
}

impl Impl {
    fn label(self) -> String {
        match self {
            Impl::Raw(k) => k.as_str().to_string(),
            Impl::Tunnel => format!("tunnel({})", CipherKind::default()),
            Impl::Openssl => "openssl".to_string(),
        }
    }
}

pub(super) fn run_cipher(args: &[String]) -> anyhow::Result<()> {
    let args = CipherArgs::try_parse_from(
        std::iter::once("membrane bench cipher".to_string()).chain(args.iter().cloned()),
    )?;
    if args.sizes.is_empty() || args.sizes.iter().any(|&s| s == 0 || s > 65_000) {
        anyhow::bail!("--sizes wants packet sizes between 1 and 65000 bytes, comma separated");
    }
    if !(args.seconds > 0.0 && args.seconds <= 60.0) || args.rounds == 0 {
        anyhow::bail!("--seconds must be in (0, 60] and --rounds at least 1");
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; cipher figures mean nothing unless built with \
             `cargo build --release -p membrane --bin membrane`"
        );
    }
    let cpu = pin_to_one_cpu();
    let secs = Duration::from_secs_f64(args.seconds);
    let impls = [
        Impl::Raw(CipherKind::Ring),
        Impl::Raw(CipherKind::RustCrypto),
        Impl::Tunnel,
        Impl::Openssl,
    ];
    let mut openssl_error = None;
    // Per size (in the order given), per implementation: MB/s of each round.
    let mut results: Vec<(usize, Vec<Vec<f64>>)> = args
        .sizes
        .iter()
        .map(|&s| (s, vec![Vec::new(); impls.len()]))
        .collect();
    for round in 0..args.rounds {
        for (size, row) in results.iter_mut() {
            let size = *size;
            for (i, imp) in impls.iter().enumerate() {
                let rate = match imp {
                    Impl::Raw(kind) => Some(raw_seal_rate(*kind, size, secs)),
                    Impl::Tunnel => Some(tunnel_seal_rate(size, secs)),
                    Impl::Openssl if openssl_error.is_none() => {
                        match openssl_rate(&args.openssl, size, args.seconds) {
                            Ok(r) => Some(r),
                            Err(e) => {
                                openssl_error = Some(format!("{e:#}"));
                                None
                            }
                        }
                    }
                    Impl::Openssl => None,
                };
                if let Some(r) = rate {
                    row[i].push(r);
                }
            }
        }
        eprintln!("round {}/{} done", round + 1, args.rounds);
    }
    println!(
        "ChaCha20-Poly1305 seal, one core ({}), {} round(s) of {:.1} s interleaved, median MB/s (10^6 bytes/s of payload)",
        cpu.map(|c| format!("pinned to CPU {c}"))
            .unwrap_or_else(|| "not pinned".into()),
        args.rounds,
        args.seconds,
    );
    let mut header = format!("{:>7}", "bytes");
    for imp in &impls {
        header += &format!(" {:>15}", imp.label());
    }
    header += &format!(
        " {:>17} {:>14} {:>15}",
        "ring/rustcrypto", "ring/openssl", "tunnel/ring"
    );
    println!("{header}");
    let mut faster_at_first = None;
    for (size, row) in &results {
        let med: Vec<Option<f64>> = row.iter().map(|v| median(v)).collect();
        let mut line = format!("{size:>7}");
        for m in &med {
            line += &match m {
                Some(v) => format!(" {v:>15.1}"),
                None => format!(" {:>15}", "-"),
            };
        }
        line += &format!(
            " {:>17} {:>14} {:>15}",
            ratio(med[0], med[1]),
            ratio(med[0], med[3]),
            ratio(med[2], med[0])
        );
        println!("{line}");
        if faster_at_first.is_none() {
            if let (Some(r), Some(c)) = (med[0], med[1]) {
                faster_at_first = Some((
                    *size,
                    if r >= c {
                        CipherKind::Ring
                    } else {
                        CipherKind::RustCrypto
                    },
                ));
            }
        }
    }
    if let Some(e) = &openssl_error {
        println!("openssl: not measured: {e}");
    }
    if let Some((size, kind)) = faster_at_first {
        println!(
            "faster at {size} bytes: {kind}; the tunnel's default is {}{}",
            CipherKind::default(),
            if kind == CipherKind::default() {
                ""
            } else {
                " (differs: see docs/benchmarks.md before changing it)"
            }
        );
    }
    Ok(())
}

/// Pins this thread (and the openssl child it starts) to the CPU it runs on, so that every
/// figure is one core's.
fn pin_to_one_cpu() -> Option<usize> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0)).ok()?;
    let cpu = (0..CpuSet::count())
        .rev()
        .find(|&c| allowed.is_set(c).unwrap_or(false))?;
    let mut one = CpuSet::new();
    one.set(cpu).ok()?;
    sched_setaffinity(Pid::from_raw(0), &one).ok()?;
    Some(cpu)
}

fn raw_seal_rate(kind: CipherKind, size: usize, secs: Duration) -> f64 {
    let cipher = kind.new_cipher(&[0x42; 32]);
    let mut buf = vec![0xa5u8; size];
    let aad = [0u8; 28];
    let mut counter = 0u64;
    measure(size, secs, || {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        counter += 1;
        let tag = cipher
            .seal_in_place(&nonce, &aad, std::hint::black_box(&mut buf))
            .expect("a packet far below the cipher's length limit");
        std::hint::black_box(tag);
    })
}

fn tunnel_seal_rate(size: usize, secs: Duration) -> f64 {
    let t = Tunnel::new(1, 1, 1, CipherKind::default());
    t.set_local_secret(1, EpochSecret::generate());
    let peer = EpochSecret::generate();
    t.set_peer(2, BTreeMap::from([(1, peer.public())]), Some(1));
    let payload = vec![0xa5u8; size];
    let mut out = Vec::with_capacity(size + 64);
    measure(size, secs, || {
        t.seal(2, std::hint::black_box(&payload), &mut out)
            .expect("a tunnel with a key to peer 2");
        std::hint::black_box(&out);
    })
}

/// Payload MB/s of `op` (which handles `size` bytes per call) over about `secs`.
fn measure(size: usize, secs: Duration, mut op: impl FnMut()) -> f64 {
    // Warm up caches and the CPU's clock for a tenth of the time.
    let warm = Instant::now();
    while warm.elapsed() < secs / 10 {
        op();
    }
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..256 {
            op();
        }
        n += 256;
        let e = start.elapsed();
        if e >= secs {
            return (n as f64 * size as f64) / e.as_secs_f64() / 1e6;
        }
    }
}

fn openssl_rate(openssl: &str, size: usize, seconds: f64) -> anyhow::Result<f64> {
    let secs = (seconds.ceil() as u64).max(1).to_string();
    let out = Command::new(openssl)
        .args(["speed", "-evp", "chacha20-poly1305", "-bytes"])
        .arg(size.to_string())
        .args(["-seconds", &secs])
        .output()
        .with_context(|| format!("cannot run {openssl:?} (is openssl installed?)"))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{openssl} speed -evp chacha20-poly1305` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_openssl_speed(&String::from_utf8_lossy(&out.stdout))
        .map(|bytes_per_sec| bytes_per_sec / 1e6)
        .ok_or_else(|| anyhow::anyhow!("no ChaCha20-Poly1305 line in openssl speed's output"))
}

/// Bytes per second from `openssl speed` output: the line that starts with the cipher's
/// name ends in a figure in thousands of bytes per second ("1688661.82k").
fn parse_openssl_speed(text: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("chacha20-poly1305"))
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|v| v.strip_suffix('k'))
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|k| k * 1000.0)
        .next_back()
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some(s[s.len() / 2])
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openssl_3_output() {
        let text = "version: 3.0.19\nThe 'numbers' are in 1000s of bytes per second processed.\n\
                    type           1420 bytes\nChaCha20-Poly1305  1688661.82k\n";
        assert_eq!(parse_openssl_speed(text), Some(1_688_661_820.0));
        assert_eq!(parse_openssl_speed("type 1420 bytes\n"), None);
        assert_eq!(parse_openssl_speed("chacha20-poly1305 garbage\n"), None);
    }

    #[test]
    fn median_and_ratio() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        assert_eq!(ratio(Some(3.0), Some(1.5)), "2.00x");
        assert_eq!(ratio(Some(3.0), None), "-");
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(run_cipher(&["--sizes".into(), "0".into()]).is_err());
        assert!(run_cipher(&["--rounds".into(), "0".into()]).is_err());
        assert!(run_cipher(&["--bogus".into()]).is_err());
    }
}
