//! Watching an agent as an operator does: `membrane monitor -o json` in the background, and
//! scrapes of its Prometheus endpoint from inside its host's namespace.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::{in_netns, membrane_binary, Cluster};

/// `membrane monitor -o json` in the background; its lines are collected as they come and
/// the process is killed when this is dropped.
pub struct MonitorProc {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl MonitorProc {
    /// Starts `membrane monitor -o json` against host `i`'s agent.
    pub fn start(c: &Cluster, i: usize) -> anyhow::Result<MonitorProc> {
        let mut child = Command::new(membrane_binary()?)
            .arg("--socket")
            .arg(c.lab().host(i).socket())
            .args(["monitor", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start membrane monitor")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => sink.lock().unwrap_or_else(|e| e.into_inner()).push(v),
                    Err(_) => eprintln!("monitor printed a line that is not JSON: {line}"),
                }
            }
        });
        Ok(MonitorProc { child, lines })
    }

    /// The first event collected so far that satisfies `pred`.
    pub fn find(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|v| pred(v))
            .cloned()
    }

    /// How many events arrived and the last few, for failure messages.
    pub fn sample(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let n = lines.len();
        let tail: Vec<String> = lines.iter().rev().take(10).map(|v| v.to_string()).collect();
        format!("{n} lines, last: {tail:#?}")
    }
}

impl Drop for MonitorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` of the agent's metrics endpoint (its default, 127.0.0.1:9962) from inside
/// host `i`'s namespace; (status line, body).
pub fn http_get(c: &Cluster, i: usize, path: &str) -> anyhow::Result<(String, String)> {
    let netns = c.lab().host(i).netns().to_string();
    let path = path.to_string();
    in_netns(&netns, move || -> anyhow::Result<(String, String)> {
        let addr: SocketAddr = "127.0.0.1:9962".parse()?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let (head, body) = resp.split_once("\r\n\r\n").context("no end of headers")?;
        Ok((
            head.lines().next().unwrap_or_default().to_string(),
            body.to_string(),
        ))
    })?
}

/// The exposition text of host `i`'s metrics endpoint.
pub fn scrape(c: &Cluster, i: usize) -> anyhow::Result<String> {
    let (status, body) = http_get(c, i, "/metrics")?;
    if !status.contains("200") {
        bail!("GET /metrics: {status}");
    }
    Ok(body)
}

/// The value of one series (`name{labels}` exactly as exposed), 0 when absent.
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(s, _)| *s == series)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}
