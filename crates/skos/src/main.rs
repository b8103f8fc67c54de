//! `skos`: the one binary. Embedded mode (`skos up`), distributed mode
//! (`skos coordinator`, `skos agent`), and the operator's tools.

mod cli;
mod commands;
mod control;
mod demo;
mod fleet;
mod heap;
mod install;

use clap::Parser;

/// The exit status after a panic in a long-running command.
const PANICKED: i32 = 101;

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
        // A panic is a bug: in a task it would leave the process running
        // with the coordinator or the agent gone. Say it and end the
        // process with a failure, so its supervisor restarts it.
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            eprintln!("skos: a task panicked (a bug): stopping so that a supervisor restarts skos");
            std::process::exit(PANICKED);
        }));
    }
    if matches!(cli.command, cli::Cmd::Demo { .. }) {
        // The demo's tmpfs is its own, gone with the process however it
        // ends; where this cannot be (not root), the demo mounts nothing.
        if let Err(e) = skos_sandbox::tmpfs::private_mounts() {
            tracing::debug!(error = %e, "no mounts of its own for the demo");
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skos: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skos: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
