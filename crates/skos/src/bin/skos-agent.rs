//! `skos-agent`: the agent of one node, alone. It runs exactly what
//! `skos agent` runs (same config, environment and flags), and links
//! nothing else, so that the process on every node maps only the agent's
//! code. Install it on nodes; `skos` stays the operator's command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The SKOS agent of node NODE_NAME, over NATS JetStream (NATS_URL): what
/// `skos agent` runs, in a binary that carries only the agent.
#[derive(Debug, Parser)]
#[command(name = "skos-agent", version, about)]
struct Args {
    /// Config file (also SKOS_CONFIG); built-in defaults when none.
    #[arg(long, short = 'c', env = "SKOS_CONFIG")]
    config: Option<PathBuf>,
    /// Where the agent keeps state that must survive a restart.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Worker threads: the agent's tasks are mostly asleep; its blocking work
/// (sensing, actions) runs on the blocking pool.
const WORKERS: usize = 1;

fn main() -> ExitCode {
    let args = Args::parse();
    // SIGPIPE stays ignored (Rust's default): a closed log pipe must not
    // kill the agent.
    skos::node::exit_on_panic();
    let runtime = match skos::node::runtime(WORKERS) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skos-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        let cfg = skos::node::load(args.config.as_deref(), args.data_dir)?;
        skos::node::agent(cfg).await
    };
    match runtime.block_on(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skos-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
