//! `membrane-lab idle-check`: a cluster left alone must not see false downs. Starts a
//! cluster, streams `membrane members --watch` on every host for the given time, and
//! reports every event other than the initial "alive" lines.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::Cluster;

/// Runs the check; fails if any node was ever reported down.
pub fn run(hosts: usize, minutes: u64) -> anyhow::Result<()> {
    crate::require_root()?;
    let c = Cluster::start("idle", hosts)?;
    // Let gossip start everywhere before watching.
    std::thread::sleep(Duration::from_secs(3));
    let bin = crate::membrane_binary()?;
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut children = Vec::new();
    for i in 1..=hosts {
        let mut child = Command::new(&bin)
            .arg("--socket")
            .arg(c.lab().host(i).socket())
            .args(["members", "--watch", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting membrane members --watch")?;
        let out = child.stdout.take().context("no stdout")?;
        let events = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if !line.contains("\"kind\":\"alive\"") {
                    events
                        .lock()
                        .expect("events")
                        .push(format!("host {i}: {line}"));
                }
            }
        });
        children.push(child);
    }
    eprintln!("watching {hosts} idle nodes for {minutes} minute(s)...");
    std::thread::sleep(Duration::from_secs(minutes * 60));
    for mut ch in children {
        let _ = ch.kill();
        let _ = ch.wait();
    }
    let events = events.lock().expect("events").clone();
    let downs: Vec<&String> = events
        .iter()
        .filter(|e| e.contains("\"kind\":\"down\""))
        .collect();
    println!(
        "{hosts} nodes idle for {minutes} min: {} membership events, {} down",
        events.len(),
        downs.len()
    );
    for e in &events {
        println!("  {e}");
    }
    anyhow::ensure!(downs.is_empty(), "false downs on an idle cluster");
    Ok(())
}
