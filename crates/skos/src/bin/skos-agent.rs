//! `skos-agent`: the agent of one node, alone. It runs exactly what
//! `skos agent` runs (same config, environment and flags), and links
//! nothing else, so that the process on every node maps only the agent's
//! code: no coordinator, HTTP API or operator's commands, and no argument
//! parser library for its two flags. Install it on nodes; `skos` stays
//! the operator's command.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
The SKOS agent of node NODE_NAME, over NATS JetStream (NATS_URL): what
`skos agent` runs, in a binary that carries only the agent.

Usage: skos-agent [OPTIONS]

Options:
  -c, --config <CONFIG>      Config file (also SKOS_CONFIG); built-in defaults when none
      --data-dir <DATA_DIR>  Where the agent keeps state that must survive a restart
  -h, --help                 Print help
  -V, --version              Print version
";

/// Worker threads: the agent's tasks are mostly asleep; its blocking work
/// (sensing, actions) runs on the blocking pool.
const WORKERS: usize = 1;

/// How long an idle blocking thread is kept: shorter than a monitor
/// interval, so that between ticks the pool's threads (and their stacks)
/// are gone.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Cli {
    Run {
        config: Option<PathBuf>,
        data_dir: Option<PathBuf>,
    },
    Help,
    Version,
}

/// A command line `skos-agent` does not take.
#[derive(Debug, PartialEq, thiserror::Error)]
enum CliError {
    #[error("unexpected argument '{0}'")]
    Unexpected(String),
    #[error("a value is required for '{0}'")]
    MissingValue(&'static str),
}

/// Parse the arguments after the program's name; `env_config` is
/// SKOS_CONFIG, used when `--config` is not given.
fn parse(
    args: impl IntoIterator<Item = OsString>,
    env_config: Option<OsString>,
) -> Result<Cli, CliError> {
    let mut config = None;
    let mut data_dir = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        // `--flag=VALUE`; `-cVALUE` and `-c=VALUE`, as clap takes them.
        let (flag, inline) = match text.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(OsString::from(v))),
            _ => match text.strip_prefix("-c").filter(|v| !v.is_empty()) {
                Some(v) => (
                    "-c".to_string(),
                    Some(OsString::from(v.strip_prefix('=').unwrap_or(v))),
                ),
                None => (text.to_string(), None),
            },
        };
        let (slot, name) = match flag.as_str() {
            "-h" | "--help" => return Ok(Cli::Help),
            "-V" | "--version" => return Ok(Cli::Version),
            "-c" | "--config" => (&mut config, "--config"),
            "--data-dir" => (&mut data_dir, "--data-dir"),
            _ => return Err(CliError::Unexpected(text.into_owned())),
        };
        let value = inline
            .or_else(|| args.next())
            .filter(|v| !v.is_empty())
            .ok_or(CliError::MissingValue(name))?;
        *slot = Some(PathBuf::from(value));
    }
    Ok(Cli::Run {
        config: config.or_else(|| env_config.filter(|v| !v.is_empty()).map(PathBuf::from)),
        data_dir,
    })
}

fn main() -> ExitCode {
    let cli = match parse(std::env::args_os().skip(1), std::env::var_os("SKOS_CONFIG")) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (config, data_dir) = match cli {
        Cli::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Cli::Version => {
            println!("skos-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Cli::Run { config, data_dir } => (config, data_dir),
    };
    // SIGPIPE stays ignored (Rust's default): a closed log pipe must not
    // kill the agent.
    skos::node::exit_on_panic();
    // One malloc arena: a mostly idle process with a handful of threads
    // needs no more, and each arena keeps its own free pages.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called before any thread is started; mallopt only changes
    // the allocator's tunables.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .thread_keep_alive(KEEP_ALIVE)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skos-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        // Reading the config takes deep stacks (the YAML parser, the
        // checks): on a pool thread, whose stack goes back to the system
        // when it ends, not on the main thread's, which would keep it.
        let cfg =
            tokio::task::spawn_blocking(move || skos::node::load(config.as_deref(), data_dir))
                .await??;
        skos::heap::spawn_trim();
        skos::node::agent(cfg).await
    };
    match runtime.block_on(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skos-agent: {}", skos::node::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn flags_in_both_forms_and_the_environment() {
        assert_eq!(
            parse(
                args(&["-c", "/etc/skos.yaml", "--data-dir=/var/lib/a"]),
                None
            ),
            Ok(Cli::Run {
                config: Some("/etc/skos.yaml".into()),
                data_dir: Some("/var/lib/a".into())
            })
        );
        assert_eq!(
            parse(args(&[]), Some("/env.yaml".into())),
            Ok(Cli::Run {
                config: Some("/env.yaml".into()),
                data_dir: None
            })
        );
        assert_eq!(
            parse(args(&["--config=/flag.yaml"]), Some("/env.yaml".into())),
            Ok(Cli::Run {
                config: Some("/flag.yaml".into()),
                data_dir: None
            })
        );
        assert_eq!(parse(args(&["--data-dir", "x", "-h"]), None), Ok(Cli::Help));
        assert_eq!(parse(args(&["-V"]), None), Ok(Cli::Version));
        for short in ["-c/etc/s.yaml", "-c=/etc/s.yaml"] {
            assert_eq!(
                parse(args(&[short]), None),
                Ok(Cli::Run {
                    config: Some("/etc/s.yaml".into()),
                    data_dir: None
                }),
                "{short}"
            );
        }
    }

    #[test]
    fn other_arguments_are_refused() {
        assert_eq!(
            parse(args(&["agent"]), None),
            Err(CliError::Unexpected("agent".into()))
        );
        assert_eq!(
            parse(args(&["--config"]), None),
            Err(CliError::MissingValue("--config"))
        );
        assert_eq!(
            parse(args(&["--data-dir="]), None),
            Err(CliError::MissingValue("--data-dir"))
        );
        assert_eq!(
            parse(args(&["--nope=1"]), None),
            Err(CliError::Unexpected("--nope=1".into()))
        );
    }
}
