//! The command line: parses arguments, talks to the local agent over its Unix socket, prints
//! tables or JSON. `anyhow` stops here: every error is printed with its causes.

mod agent;
mod args;
mod bench;
mod client;
mod conn;
mod encrypt;
mod flow;
mod output;
mod token_source;

use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::Parser;

use crate::init::InitOptions;
use args::{Command, InitArgs, PolicyCmd};
use client::read_source;
use output::Output;

pub use args::{Cli, Format};

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.output);
    let result = match cli.command {
        Command::Agent(args) => agent::run_agent(*args, &cli.socket),
        Command::Init(args) => run_init(args, &out),
        Command::Bench { what, args } if what == "cipher" => bench::run_cipher(&args),
        Command::Bench { what, args } => run_bench(&what, &args),
        Command::Policy(PolicyCmd::Validate { file }) => run_validate(&file, &out),
        other => runtime().and_then(|rt| rt.block_on(client::run_client(other, &cli.socket, &out))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::transport::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `membrane policy validate`: the same parser and checks as an import, locally.
fn run_validate(file: &std::path::Path, out: &Output) -> anyhow::Result<()> {
    let (text, label) = read_source(file)?;
    let policies = crate::policy::parse_policies(&label, &text).map_err(|e| anyhow!("{e}"))?;
    let names: Vec<String> = policies.iter().map(|p| p.metadata.name.clone()).collect();
    out.message(
        &format!(
            "{label}: {} valid policies: {}",
            names.len(),
            names.join(", ")
        ),
        serde_json::json!({"file": label, "valid": true, "policies": names}),
    );
    Ok(())
}

/// `membrane bench WHAT`: the benchmarks build real labs of namespaces, which is the lab
/// crate's job; run its binary from beside this one.
fn run_bench(what: &str, args: &[String]) -> anyhow::Result<()> {
    let me = std::env::current_exe().context("cannot find this binary's path")?;
    let lab = me.with_file_name("membrane-lab");
    if !lab.exists() {
        anyhow::bail!(
            "{} is missing; build it with `cargo build --release -p membrane-jepsen` (or run scripts/bench.sh {what})",
            lab.display()
        );
    }
    let status = std::process::Command::new(&lab)
        .arg("bench")
        .arg(what)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", lab.display()))?;
    if !status.success() {
        anyhow::bail!("the {what} benchmark failed ({status})");
    }
    Ok(())
}

fn run_init(args: InitArgs, out: &Output) -> anyhow::Result<()> {
    let advertise = match args.advertise_addr {
        Some(a) => a,
        None => crate::default_advertise_addr()?,
    };
    let opts = InitOptions {
        state_dir: args.state_dir,
        cluster_name: args.cluster_name,
        cluster_id: args.cluster_id,
        node_name: args.name.unwrap_or_else(crate::default_node_name),
        advertise,
        pod_cidr: args.pod_cidr,
        node_cidr_size: args.node_cidr_size,
        token_ttl_secs: args.token_ttl,
    };
    let report = crate::init::init(&opts)?;
    out.init(&report);
    Ok(())
}
