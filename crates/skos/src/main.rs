//! `skos`: the one binary. Embedded mode (`skos up`), distributed mode
//! (`skos coordinator`, `skos agent`), and the operator's tools.

mod cli;
mod commands;
mod control;
mod demo;
mod fleet;
mod install;

use clap::Parser;

/// jemalloc, not glibc's malloc: a coordinator tracking 100,000 nodes
/// holds them in many small blocks allocated while a fleet joins, among
/// the short-lived ones of that burst (making each node's command
/// consumer, decoding heartbeats). glibc left the freed ones resident
/// between live ones: 1,123 - 1,192 bytes per node and 0.27 - 0.32 core,
/// against 792 - 802 bytes and 0.10 - 0.14 core under jemalloc, which
/// also hands its free pages back to the system on its own
/// (`skos-bench footprint`, bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if !cli.command.is_long_running() {
        // A command that prints and exits ends quietly when its reader
        // goes away (`skos audit tail | head -1`), as other Unix tools do,
        // instead of panicking on the broken pipe. The long-running ones
        // keep Rust's default (SIGPIPE ignored): a closed log pipe must not
        // kill a coordinator or an agent.
        // SAFETY: called before any thread is started; resetting a signal
        // disposition to its default has no other precondition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    } else {
        skos::node::exit_on_panic();
    }
    if matches!(cli.command, cli::Cmd::Demo { .. }) {
        // The demo's tmpfs is its own, gone with the process however it
        // ends; where this cannot be (not root), the demo mounts nothing.
        if let Err(e) = skos_sandbox::tmpfs::private_mounts() {
            tracing::debug!(error = %e, "no mounts of its own for the demo");
        }
    }
    let runtime = match skos::node::runtime(2) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skos: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skos: {}", skos::node::error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
