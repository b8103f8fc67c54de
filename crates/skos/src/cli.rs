use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// SKOS: a self-healing immune system for Linux machines.
#[derive(Debug, Parser)]
#[command(name = "skos", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArg {
    /// Config file (also SKOS_CONFIG); built-in defaults when none.
    #[arg(long, short = 'c', env = "SKOS_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Embedded mode: coordinator and local agent in one process, no other software needed.
    Up {
        #[command(flatten)]
        config: ConfigArg,
        /// Where the audit trail and state live (also SKOS_DATA_DIR; default ./skos-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Serve the HTTP API, metrics and live page here (IP:port), or
        /// `off` (default: http.listen, 127.0.0.1:9477).
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
    /// The coordinator, over NATS JetStream (NATS_URL).
    Coordinator {
        #[command(flatten)]
        config: ConfigArg,
        /// Serve the HTTP API, metrics and live page here (IP:port), or
        /// `off` (default: http.listen, 127.0.0.1:9477).
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
    /// The agent of node NODE_NAME, over NATS JetStream (NATS_URL).
    Agent {
        #[command(flatten)]
        config: ConfigArg,
        /// Where the agent keeps state that must survive a restart.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Every temperature sensor found, with its source path, label, kind and °C.
    Sensors {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// The fleet's summary and one page of nodes (problems first), with open
    /// alerts, recent actions and open circuits; or one node in full.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the coordinator's reply as it is (JSON).
        #[arg(long)]
        json: bool,
        /// Read an embedded-mode data dir even when NATS_URL is set.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Show it again every SECS seconds (at least 0.2) until stopped;
        /// on a terminal the screen is redrawn, elsewhere each status
        /// follows the last.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
        #[command(flatten)]
        query: StatusArgs,
    },
    /// Read or check the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Signing keys for commands.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// The whole loop on a sandbox it makes and removes (a fake CPU and a
    /// small tmpfs; never the real machine): heat, alert, throttle,
    /// verified, restored; a filling disk, cleanup, verified. Every line
    /// and audit record is labelled [demo].
    Demo {
        /// Serve the HTTP API and live page here (IP:port) while it runs.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// Seconds to wait between steps, so each can be seen (default 1;
        /// 5 with --http, for the page).
        #[arg(long, value_name = "SECS")]
        pace: Option<f64>,
    },
    /// Silences and maintenance windows: actions the coordinator must not
    /// take on a node for a while (alerts are still recorded and decided,
    /// the actions skipped as `silenced`). Sent to the leading coordinator
    /// over NATS when NATS_URL is set, else to `skos up`'s HTTP API
    /// (http.listen, with the token in http.token_file).
    Silence {
        #[command(subcommand)]
        command: SilenceCmd,
    },
    /// Plans waiting for a person (`failover.require_approval`): list them.
    Approvals {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Start a plan waiting for approval (the id `skos approvals` and
    /// `skos status` show); audited with who approved it.
    Approve {
        /// The approval's id.
        id: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Drop a plan waiting for approval; audited with who denied it.
    Deny {
        /// The approval's id.
        id: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// What the coordinator keeps about nodes.
    Node {
        #[command(subcommand)]
        command: NodeCmd,
    },
    /// Fleet-wide setup.
    Fleet {
        #[command(subcommand)]
        command: FleetCmd,
    },
    /// Shell completions, on standard output (e.g. `skos completions bash >
    /// /etc/bash_completion.d/skos`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// The man page (roff), on standard output (`skos man > skos.1`).
    Man,
    /// Install this binary, the systemd units, /etc/skos/config.yaml (from
    /// the example, only where there is none), the `skos` system user and
    /// the data dirs; idempotent. Needs root.
    Install {
        /// Install under this dir instead of / (a chroot, an image, a
        /// mounted disk): systemd is then left alone.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// The config to install where there is none (default: the example).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The lean agent binary to install, where the agent's unit runs
        /// `skos-agent` (default: `skos-agent` beside this binary; without
        /// one, the unit runs `skos agent`).
        #[arg(long, value_name = "FILE")]
        agent_binary: Option<PathBuf>,
        /// Enable and start these units afterwards (coordinator, agent;
        /// comma-separated; only with systemd running and --root /).
        #[arg(long, value_delimiter = ',', value_name = "ROLE")]
        enable: Vec<crate::install::Role>,
        /// Stop and remove the units and the binary (the config, the data
        /// dirs and the user are kept unless --purge).
        #[arg(long)]
        uninstall: bool,
        /// With --uninstall: also remove the config, the data dirs and the
        /// user.
        #[arg(long, requires = "uninstall")]
        purge: bool,
    },
}

impl Cmd {
    /// `up`, `coordinator` and `agent` run until stopped, and `demo` runs
    /// its loop (a closed pipe must not end it before it removes its
    /// sandbox); the rest print and exit.
    pub fn is_long_running(&self) -> bool {
        matches!(
            self,
            Cmd::Up { .. } | Cmd::Coordinator { .. } | Cmd::Agent { .. } | Cmd::Demo { .. }
        )
    }
}

/// Which part of the status `skos status` asks for.
#[derive(Debug, Args, Clone, Default)]
pub struct StatusArgs {
    /// Show this node in full: its readings, agents, open alerts, recent
    /// actions and open circuits.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Which page of nodes, from 1.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub page: u64,
    /// Nodes per page (the coordinator lists at most 200).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub per_page: Option<u64>,
    /// Only nodes that are not healthy (emergency, critical, offline, degraded).
    #[arg(long)]
    pub problems: bool,
    /// Order nodes by name only (pages that do not move when a node's
    /// health changes), not problems first.
    #[arg(long)]
    pub by_name: bool,
}

/// Where an operator's change goes, and who asks.
#[derive(Debug, Args, Clone, Default)]
pub struct ControlArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The address of `skos up`'s HTTP API (IP:port) when NATS_URL is not
    /// set (default: http.listen).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Who asks, as the audit trail records it (default: the login name,
    /// from SUDO_USER, USER or LOGNAME).
    #[arg(long, value_name = "WHO")]
    pub by: Option<String>,
    /// Print the coordinator's reply as it is (JSON).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SilenceCmd {
    /// Silence a node (or one kind, problem or action on it) for a while,
    /// from now or from --start.
    Add {
        /// The node.
        #[arg(long)]
        node: String,
        /// Only problems of this kind (thermal, storage, mesh, loop, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Only this problem (thermal:cpu, storage:/srv).
        #[arg(long)]
        problem: Option<String>,
        /// Only this action (throttle_50, cleanup_temp, ...).
        #[arg(long)]
        action: Option<String>,
        /// How long it holds from its start (90m, 4h, 2days); with --every,
        /// how long each window lasts.
        #[arg(
            long = "for",
            value_name = "DURATION",
            required_unless_present = "until"
        )]
        duration: Option<String>,
        /// When it stops holding (RFC 3339: 2026-03-01T06:00:00Z); with
        /// --every, when the series ends (default: a year after its start).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Recurring windows for planned work: a 5-field cron pattern in
        /// UTC at which each window begins ("0 2 * * SUN#1": the first
        /// Sunday of each month at 02:00), each lasting --for.
        #[arg(long, value_name = "CRON")]
        every: Option<String>,
        /// When it starts holding (RFC 3339; default now): a maintenance
        /// window planned ahead.
        #[arg(long, value_name = "TIME")]
        start: Option<String>,
        /// Why (required; recorded in the audit trail).
        #[arg(long)]
        comment: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Every silence kept, holding now or starting later.
    List {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// End a silence now; the problems it held are decided again.
    Expire {
        /// The silence's id (s-...).
        id: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Forget a node that left the fleet: its state, open alerts, pending
    /// commands and deadlines are dropped (audited with who asked).
    Forget {
        /// The node.
        name: String,
        /// Forget it even though it was heard from recently (it comes
        /// back with its next heartbeat).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum FleetCmd {
    /// Write everything a fleet needs into --out: the nats-server config
    /// with least-privilege users (as nats-config), the keys (in keys/),
    /// the coordinator's config, one config per agent trusting the
    /// coordinator's signing key, the operator's, and NEXT-STEPS (printed).
    Init {
        /// The nodes, comma-separated (nova,lyra,athena).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Where it all goes (created, mode 700).
        #[arg(long)]
        out: PathBuf,
        /// Where the server will be, as every process reaches it.
        #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// Replace a fleet already in --out (every key changes).
        #[arg(long)]
        force: bool,
    },
    /// Print a nats-server authorization config where each node's agent may
    /// publish only its own subjects and read only its own commands (through
    /// the consumer the coordinator makes), the coordinator may not delete or
    /// purge the audit and state streams, and operators only read the trail and
    /// ask the coordinator (status, silences, forgetting a node); write one
    /// nkeys login seed per node, one for the coordinator, one for operators
    /// (`skos status`, `skos audit`), and the coordinator's command signing
    /// key apart, into --out.
    NatsConfig {
        /// The nodes, comma-separated (nova,lyra,athena).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Where the seed files go (created, mode 700; seeds mode 600).
        #[arg(long)]
        out: PathBuf,
        /// Replace seed files already in --out (every agent then needs the
        /// new signing key, and every node its new login key).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Write a new nkeys seed file (mode 0600) and print its public key.
    Generate {
        /// Where to write the seed (it is secret).
        #[arg(long, default_value = "skos-coordinator.nk")]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// The last entries of the audit trail.
    Tail {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(short = 'n', default_value_t = 20)]
        n: u64,
        #[arg(long)]
        json: bool,
        /// Then print each record as it is written, until stopped.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Read an embedded-mode data dir even when NATS_URL is set.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check the hash chain: fails on any changed, removed or reordered
    /// entry; on JetStream, with trusted coordinator keys in the config, on
    /// any message not signed by one of them (reported by stream sequence).
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Read an embedded-mode data dir even when NATS_URL is set.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Also check the trail still holds the record of this checkpoint
        /// (written by `skos audit checkpoint`) with the same hash.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Take a checkpoint of the trail's last (signed) record, to keep where
    /// the trail's writers cannot change it: `verify --checkpoint` then
    /// detects a trail deleted and rebuilt, or cut short.
    Checkpoint {
        #[command(flatten)]
        config: ConfigArg,
        /// Read an embedded-mode data dir even when NATS_URL is set.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Write it to this new file (0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate a config file; every error with its key path.
    Check {
        /// The config file to check (also SKOS_CONFIG); required.
        #[arg(long, short = 'c', env = "SKOS_CONFIG")]
        config: Option<PathBuf>,
    },
}
