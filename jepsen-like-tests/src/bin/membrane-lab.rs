//! `membrane-lab`: runs Membrane clusters in network namespaces on this machine.
//!
//! - `membrane-lab demo [--keep]`: the README's main job.
//! - `membrane-lab bench registry [...]`: the registry benchmark against etcd.
//! - `membrane-lab bench datapath [...]`: endpoint throughput and latency against plain
//!   kernel bridge and VXLAN paths.
//! - `membrane-lab bench policy [...]`: connection rate and latency under 10-10,000 policy
//!   rules against equivalent iptables chains.

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: membrane-lab demo [--keep] | membrane-lab bench registry [--clients N] [--ops N] [--via all|leader] | membrane-lab bench datapath [--runs N] [--round-trips N] [--seconds N] [--baseline-only] | membrane-lab bench policy [--rules 10,1000,10000] [--seconds N] [--runs N] [--round-trips N] [--peers N] [--iptables PROGRAM] | membrane-lab idle-check HOSTS MINUTES"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["demo", rest @ ..] => membrane_jepsen::demo::run(rest.contains(&"--keep")),
        ["bench", "registry", rest @ ..] => membrane_jepsen::bench::registry::run(rest),
        ["bench", "datapath", rest @ ..] => membrane_jepsen::bench::datapath::run(rest),
        ["bench", "policy", rest @ ..] => membrane_jepsen::bench::policy::run(rest),
        ["idle-check", hosts, minutes] => match (hosts.parse(), minutes.parse()) {
            (Ok(h), Ok(m)) => membrane_jepsen::idle::run(h, m),
            _ => return usage(),
        },
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
