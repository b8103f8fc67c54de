//! `skos`: the one binary. Embedded mode (`skos up`), distributed mode
//! (`skos coordinator`, `skos agent`), and the operator's tools.

mod cli;
mod commands;
mod fleet;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
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
