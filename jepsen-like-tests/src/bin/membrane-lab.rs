//! `membrane-lab`: runs Membrane clusters in network namespaces on this machine.
//!
//! - `membrane-lab demo [--keep]`: the README's main job.
//! - `membrane-lab bench registry [...]`: the registry benchmark against etcd.
//! - `membrane-lab bench datapath [...]`: endpoint throughput and latency against plain
//!   kernel bridge and VXLAN paths.
//! - `membrane-lab bench policy [...]`: connection rate and latency under 10-10,000 policy
//!   rules against equivalent iptables chains.
//! - `membrane-lab bench tunnel [...]`: encrypted throughput, latency and CPU per GB vs
//!   plain VXLAN and boringtun, with the raw cipher rate as the limit.
//! - `membrane-lab idle-check HOSTS MINUTES`: a cluster left alone must see no false downs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use membrane_jepsen::bench::{datapath, policy, registry, tunnel};

/// Runs Membrane clusters in network namespaces on this machine (as root).
#[derive(Parser)]
#[command(name = "membrane-lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The README's demo: a cluster, endpoints, a policy, and which endpoint reaches which.
    Demo {
        /// Wait for Ctrl-C before tearing the lab down.
        #[arg(long)]
        keep: bool,
    },
    /// Compares Membrane with a reference system side by side, in one run.
    #[command(subcommand)]
    Bench(Bench),
    /// Watches a cluster left alone for false downs.
    IdleCheck {
        /// Agents in the lab.
        hosts: usize,
        /// How long to watch.
        minutes: u64,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Identity allocations against a 3-node cluster vs create-if-absent writes to a 3-member etcd.
    Registry(registry::Args),
    /// Endpoint TCP throughput and ping-pong latency vs a plain bridge and a plain kernel VXLAN.
    Datapath(datapath::Args),
    /// Connection rate and latency under N-rule policies vs equivalent iptables chains.
    Policy(policy::Args),
    /// Encrypted node-to-node throughput, latency and CPU vs plain VXLAN and boringtun.
    Tunnel(tunnel::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Demo { keep } => membrane_jepsen::demo::run(keep),
        Command::Bench(Bench::Registry(args)) => registry::run(&args),
        Command::Bench(Bench::Datapath(args)) => datapath::run(&args),
        Command::Bench(Bench::Policy(args)) => policy::run(&args),
        Command::Bench(Bench::Tunnel(args)) => tunnel::run(&args),
        Command::IdleCheck { hosts, minutes } => membrane_jepsen::idle::run(hosts, minutes),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
