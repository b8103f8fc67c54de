//! `skos`: the one binary. Embedded mode (`skos up`), distributed mode
//! (`skos coordinator`, `skos agent`), and the operator's tools.

mod cli;
mod commands;
mod fleet;
mod heap;

use clap::Parser;

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
