//! `skos fleet nats-config`: a nats-server authorization block for a fleet,
//! with least privilege for each credential:
//!
//! * **agents** (one login key per node) publish only their own heartbeats,
//!   alerts, results and chain announcements, and read only their own
//!   commands: fetch, ack and info on their own command consumer, which the
//!   coordinator creates with its fixed filter. No stream or consumer may be
//!   created, changed or listed, so no agent can re-point its consumer at
//!   another node's commands or learn other nodes' names.
//! * **the coordinator** may do everything but delete, purge, update or
//!   restore the audit and state streams (`SKOS_AUDIT`, `SKOS_STATE`) or
//!   delete their messages; only it may publish on their subjects.
//! * **operators** (`skos status`, `skos audit tail/verify`, `skos
//!   silence`, `skos node forget`): a status or control request to the
//!   coordinator, which audits every change with who asked, and the audit
//!   stream's info and messages; nothing else.
//!
//! The server config holds public keys only; the seeds are written to
//! files, one per credential.

use skos_core::escape::ShowPath;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use skos_bus::subjects;
use skos_bus::trust::Signer;
use skos_core::NodeName;

/// A list of subjects, quoted, in nats-server syntax.
fn list(subjects: &[String]) -> String {
    subjects
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The permissions of one node's agent, in nats-server syntax: its own
/// heartbeats, alerts, results and chain announcements out; fetch, ack and
/// info on its own command consumer (never create: the coordinator makes
/// it, filtering only this node's commands); its own inbox and chain
/// steps in, with replies to those steps (`allow_responses`). No stream
/// info, names or list: those would name every node.
pub fn agent_permissions(node: &NodeName) -> String {
    let consumer = subjects::agent_consumer(node);
    let commands = subjects::STREAM_COMMANDS;
    let publish = [
        subjects::heartbeat(node),
        subjects::alert(node),
        subjects::result(node),
        subjects::chain_control(node),
        format!("$JS.API.CONSUMER.INFO.{commands}.{consumer}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{commands}.{consumer}"),
        format!("$JS.ACK.{commands}.{consumer}.>"),
    ];
    format!(
        "permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }}, allow_responses: true }}",
        list(&publish),
        list(&[format!("_INBOX_{node}.>"), subjects::chain(node)])
    )
}

/// The streams no SKOS credential may delete, purge, change or restore,
/// nor delete a message of.
const LOCKED_STREAMS: [&str; 2] = [subjects::STREAM_AUDIT, subjects::STREAM_STATE];

/// The coordinator's permissions: everything (it creates the streams and
/// the agents' consumers, commands every node, writes the audit trail and
/// its state), but for changing or removing what is in the locked streams.
pub fn coordinator_permissions() -> String {
    let deny: Vec<String> = LOCKED_STREAMS
        .iter()
        .flat_map(|s| {
            ["DELETE", "PURGE", "UPDATE", "RESTORE", "MSG.DELETE"]
                .map(|op| format!("$JS.API.STREAM.{op}.{s}"))
        })
        .collect();
    format!(
        "permissions: {{ publish: {{ allow: [\">\"], deny: [{}] }}, subscribe: {{ allow: [\">\"] }} }}",
        list(&deny)
    )
}

/// The operator's permissions: status and control requests (answered on
/// its own inbox: silences, forgetting a node, which the coordinator
/// audits with who asked), and reading the audit stream's info and
/// messages. Nothing else: no command, alert, stream or consumer.
pub fn operator_permissions() -> String {
    let audit = subjects::STREAM_AUDIT;
    let publish = [
        subjects::STATUS.to_string(),
        subjects::CONTROL.to_string(),
        format!("$JS.API.STREAM.INFO.{audit}"),
        format!("$JS.API.STREAM.MSG.GET.{audit}"),
        format!("$JS.API.DIRECT.GET.{audit}"),
        format!("$JS.API.DIRECT.GET.{audit}.>"),
    ];
    format!(
        "permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }}",
        list(&publish),
        list(&[format!("{}.>", subjects::OPERATOR_INBOX)])
    )
}

/// The file names of the coordinator's and the operator's seeds in --out:
/// no node may have them (its login seed would replace one of them; and
/// an agent `operator` would share the operator's inbox).
const RESERVED_FILES: [&str; 3] = ["coordinator", "coordinator-signing", "operator"];

/// Where, under `--out`, each node's own signing key goes (`<node>.nk`).
const NODE_KEYS_DIR: &str = "node-keys";

/// A node name as it goes into the server config: letters, digits, `-`
/// and `_` only, so that no name can close a quoted subject and add a
/// permission.
fn config_safe(name: &NodeName) -> bool {
    name.as_str()
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn write_seed(path: &Path, seed: &str, force: bool) -> Result<()> {
    let mut open = std::fs::OpenOptions::new();
    // Never written through a planted symlink, --force or not.
    open.write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
    if force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let mut f = open.open(path).with_context(|| {
        if path.exists() && !force {
            format!(
                "{} exists: replacing a seed changes keys agents and the server already use (--force to replace)",
                path.escaped()
            )
        } else {
            format!("cannot write {}", path.escaped())
        }
    })?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", path.escaped()))?;
    writeln!(f, "{seed}").with_context(|| format!("cannot write {}", path.escaped()))?;
    Ok(())
}

/// The keys of a fleet, written: the server's authorization block and the
/// public key agents trust.
struct Keys {
    /// The nats-server `authorization { ... }` block.
    authorization: String,
    /// The coordinator's command signing key, public.
    signing_public: String,
    names: Vec<NodeName>,
    /// Each node's signing key, public, as `name: key`.
    node_keys: Vec<String>,
}

/// Check `nodes`, then write one login seed per node, the coordinator's,
/// the operator's and the signing seed into `out` (created 0700); refuses
/// (writes nothing) when any is there already, unless `force`.
fn write_keys(nodes: &[String], out: &Path, force: bool) -> Result<Keys> {
    let mut names = Vec::new();
    for n in nodes {
        match NodeName::parse(n.trim()) {
            Ok(name) if RESERVED_FILES.contains(&name.as_str()) => {
                bail!("--nodes: {name} is the name of the coordinator's own key file (or the operator's); name the node otherwise")
            }
            Ok(name) if !config_safe(&name) => {
                bail!("--nodes: {} has characters other than letters, digits, '-' and '_': not written into a server config", name.as_str().escape_debug())
            }
            Ok(name) if !names.contains(&name) => names.push(name),
            Ok(name) => bail!("node {name} is named twice"),
            Err(e) => bail!("--nodes: {e}"),
        }
    }
    // Created 0700; refused when it is (or lies under) a symlink, or is
    // another user's or writable by others: the seeds go nowhere else.
    skos_fs::Dir::private(out).context("--out refused")?;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod {}", out.escaped()))?;
    // Nothing is written if any seed is there already (unless --force).
    let files: Vec<std::path::PathBuf> = RESERVED_FILES
        .iter()
        .map(|f| out.join(format!("{f}.nk")))
        .chain(names.iter().map(|n| out.join(format!("{n}.nk"))))
        .chain(
            names
                .iter()
                .map(|n| out.join(NODE_KEYS_DIR).join(format!("{n}.nk"))),
        )
        .collect();
    if let Some(there) = files.iter().find(|p| p.exists()).filter(|_| !force) {
        bail!(
            "{} exists: replacing seeds changes keys agents and the server already use (--force to replace them all)",
            there.escaped()
        );
    }
    let (coord_seed, coord_public) = Signer::generate()?;
    write_seed(&out.join("coordinator.nk"), &coord_seed, force)?;
    // Commands are signed with a key of their own: a NATS server signs
    // its login nonce with the login key, whatever nonce it chose.
    let (signing_seed, signing_public) = Signer::generate()?;
    write_seed(&out.join("coordinator-signing.nk"), &signing_seed, force)?;
    // Operators: a key of their own, not the coordinator's.
    let (operator_seed, operator_public) = Signer::generate()?;
    write_seed(&out.join("operator.nk"), &operator_seed, force)?;
    let mut users = vec![
        format!(
            "    # the coordinator: all but deleting, purging or changing SKOS_AUDIT and SKOS_STATE\n    {{ nkey: {coord_public}, {} }}",
            coordinator_permissions()
        ),
        format!(
            "    # operators (skos status, skos audit, skos silence, skos node forget): status and control requests, reading the trail\n    {{ nkey: {operator_public}, {} }}",
            operator_permissions()
        ),
    ];
    // Each node signs its heartbeats, alerts and results with a key of its
    // own, apart from its login key (for the same reason as commands).
    let node_keys_dir = out.join(NODE_KEYS_DIR);
    skos_fs::Dir::private(&node_keys_dir).context("--out refused")?;
    std::fs::set_permissions(&node_keys_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod {}", node_keys_dir.escaped()))?;
    let mut node_keys = Vec::new();
    for name in &names {
        let (seed, public) = Signer::generate()?;
        write_seed(&out.join(format!("{name}.nk")), &seed, force)?;
        users.push(format!(
            "    # agent {name}\n    {{ nkey: {public}, {} }}",
            agent_permissions(name)
        ));
        let (seed, public) = Signer::generate()?;
        write_seed(&node_keys_dir.join(format!("{name}.nk")), &seed, force)?;
        // Quoted: a name such as `123`, `null` or `true` is a string.
        node_keys.push(format!("\"{name}\": {public}"));
    }
    Ok(Keys {
        authorization: format!(
            "authorization {{\n  users = [\n{}\n  ]\n}}",
            users.join("\n")
        ),
        signing_public,
        names,
        node_keys,
    })
}

pub fn nats_config(nodes: &[String], out: &Path, force: bool) -> Result<ExitCode> {
    let keys = write_keys(nodes, out, force)?;
    println!(
        "# nats-server authorization for a SKOS fleet, written by `skos fleet nats-config`.\n\
# Login seeds: {dir}/coordinator.nk for the coordinator, {dir}/operator.nk for operators'\n\
# skos status, skos audit, skos silence and skos node forget, {dir}/<node>.nk for each agent (set\n\
# nats.nkey_seed_file to it). {dir}/coordinator-signing.nk signs commands\n\
# (trust.signing_key_file only; never a login key); {dir}/node-keys/<node>.nk signs\n\
# each node's heartbeats, alerts and results (trust.node_key_file only). Unknown\n\
# clients cannot connect.\n\
{}",
        keys.authorization,
        dir = out.escaped()
    );
    let node_keys_dir = out.join(NODE_KEYS_DIR);
    eprintln!(
        "skos: wrote {} seed files to {} (mode 600). Coordinator: nats.nkey_seed_file: {}, trust.signing_key_file: {} (a separate key: never use a login key to sign commands), trust.node_keys: {{{}}}. Operators: nats.nkey_seed_file: {}. Agents: trust.coordinator_keys: [{}], trust.node_key_file: {}/<node>.nk",
        2 * keys.names.len() + 3,
        out.escaped(),
        out.join("coordinator.nk").escaped(),
        out.join("coordinator-signing.nk").escaped(),
        keys.node_keys.join(", "),
        out.join("operator.nk").escaped(),
        keys.signing_public,
        node_keys_dir.escaped()
    );
    Ok(ExitCode::SUCCESS)
}

/// A path as it goes into a YAML or server config: quoted, refused when
/// it could not be read back as written.
fn quoted(path: &Path) -> Result<String> {
    let text = path
        .to_str()
        .filter(|t| !t.chars().any(|c| c.is_control() || c == '"' || c == '\\'))
        .ok_or_else(|| anyhow::anyhow!("{}: a path SKOS writes into a config may not hold quotes, backslashes or control characters", path.escaped()))?;
    Ok(format!("\"{text}\""))
}

/// `skos fleet init`: everything a fleet needs to start, in `out`: the
/// keys (in `out/keys`, as `nats-config` writes them), the nats-server
/// config with least-privilege users, the coordinator's config, one
/// config per agent trusting the coordinator's signing key, the
/// operator's, and `NEXT-STEPS`.
pub fn init(nodes: &[String], out: &Path, url: &str, force: bool) -> Result<ExitCode> {
    let out = std::path::absolute(out).with_context(|| format!("--out {}", out.escaped()))?;
    let (host, port) = server_address(url)?;
    skos_fs::Dir::private(&out).context("--out refused")?;
    let names: Vec<String> = nodes.iter().map(|n| n.trim().to_string()).collect();
    let configs: Vec<String> = [
        "nats-server.conf",
        "coordinator.yaml",
        "operator.yaml",
        "NEXT-STEPS",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(names.iter().map(|n| format!("agent-{n}.yaml")))
    .collect();
    if let Some(there) = configs
        .iter()
        .map(|c| out.join(c))
        .find(|p| p.exists())
        .filter(|_| !force)
    {
        bail!(
            "{} exists: skos fleet init writes a new fleet (--force to replace it all)",
            there.escaped()
        );
    }
    let keys_dir = out.join("keys");
    let keys = write_keys(nodes, &keys_dir, force)?;
    let key = |name: &str| quoted(&keys_dir.join(format!("{name}.nk")));
    let listen = if host == "127.0.0.1" || host == "localhost" || host == "::1" {
        format!("127.0.0.1:{port}")
    } else {
        format!("0.0.0.0:{port}")
    };
    let store = quoted(&out.join("jetstream"))?;
    let server = format!(
        "# nats-server config for a SKOS fleet, written by `skos fleet init`.\n\
# Start it with: nats-server -c {conf}\n\
listen: {listen}\n\
jetstream {{ store_dir: {store} }}\n\
{}\n",
        keys.authorization,
        conf = out.join("nats-server.conf").escaped(),
    );
    let signing = &keys.signing_public;
    let url_line = format!("nats:\n  url: {url}\n");
    let coordinator = format!(
        "# The coordinator, written by `skos fleet init`: skos coordinator -c {this}\n\
{url_line}  nkey_seed_file: {login}\n\
trust:\n  signing_key_file: {signing_file}\n  coordinator_keys: [{signing}]\n\
{node_trust}",
        this = out.join("coordinator.yaml").escaped(),
        login = key("coordinator")?,
        signing_file = key("coordinator-signing")?,
        // Every node's messages are taken only signed with its own key.
        node_trust = [
            "  # A node added later needs its key here.".to_string(),
            format!("  node_keys: {{{}}}", keys.node_keys.join(", ")),
            "  require_node_signatures: true\n".to_string(),
        ]
        .join("\n"),
    );
    let operator = format!(
        "# Operators, written by `skos fleet init`: NATS_URL={url} skos status -c {this}\n\
{url_line}  nkey_seed_file: {login}\n\
trust:\n  coordinator_keys: [{signing}]\n",
        this = out.join("operator.yaml").escaped(),
        login = key("operator")?,
    );
    let dir = skos_fs::Dir::private(&out).context("--out refused")?;
    let write = |name: &str, text: &str| -> Result<()> {
        dir.write_atomic(name.as_ref(), text.as_bytes())
            .with_context(|| format!("cannot write {}", out.join(name).escaped()))
    };
    write("nats-server.conf", &server)?;
    write("coordinator.yaml", &coordinator)?;
    write("operator.yaml", &operator)?;
    for name in &keys.names {
        let agent = format!(
            "# The agent of {name}, written by `skos fleet init`: skos agent -c {this}\n\
node:\n  name: \"{name}\"\n\
{url_line}  nkey_seed_file: {login}\n\
trust:\n  coordinator_keys: [{signing}]\n  node_key_file: {node_key}\n",
            this = out.join(format!("agent-{name}.yaml")).escaped(),
            login = key(name.as_str())?,
            node_key = quoted(&keys_dir.join(NODE_KEYS_DIR).join(format!("{name}.nk")))?,
        );
        write(&format!("agent-{name}.yaml"), &agent)?;
    }
    let d = out.escaped();
    let nodes_list: Vec<&str> = keys.names.iter().map(|n| n.as_str()).collect();
    let mut lines = vec![
        format!(
            "Next steps for this SKOS fleet ({}), written by `skos fleet init`.",
            nodes_list.join(", ")
        ),
        String::new(),
        format!("1. On the bus machine ({host}), start the server:"),
        format!("     nats-server -c {d}/nats-server.conf"),
        format!("2. Start the coordinator (anywhere that reaches {url}) first: it creates"),
        "   the streams and each agent's command consumer, which agents may not.".into(),
        format!("     skos coordinator -c {d}/coordinator.yaml"),
        "3. On each node, with its config and its keys at the same paths (copy them".into(),
        "   there, mode 600; a node needs only its agent-<node>.yaml, keys/<node>.nk".into(),
        "   and keys/node-keys/<node>.nk):".into(),
    ];
    for n in &keys.names {
        lines.push(format!("     skos agent -c {d}/agent-{n}.yaml    # on {n}"));
    }
    lines.extend([
        "4. Ask the coordinator, with the operator's key:".into(),
        format!("     NATS_URL={url} skos status -c {d}/operator.yaml"),
        format!("     NATS_URL={url} skos audit verify -c {d}/operator.yaml"),
        String::new(),
        format!("The seeds in {d}/keys are secrets: keys/coordinator.nk and"),
        "keys/coordinator-signing.nk stay with the coordinator, keys/operator.nk with".into(),
        "operators, keys/<node>.nk and keys/node-keys/<node>.nk with its node. The server listens without TLS: across".into(),
        "machines, add TLS to nats-server.conf and nats.tls to every config (README:".into(),
        "Credentials on the bus).".into(),
    ]);
    let next = lines.join("\n") + "\n";
    write("NEXT-STEPS", &next)?;
    print!("{next}");
    eprintln!(
        "skos: wrote the fleet of {} node(s) to {d}: nats-server.conf, coordinator.yaml, operator.yaml, {} agent config(s), NEXT-STEPS, and {} seeds in keys/ (mode 600)",
        keys.names.len(),
        keys.names.len(),
        2 * keys.names.len() + 3
    );
    Ok(ExitCode::SUCCESS)
}

/// The host and port of a `nats://host:port` URL, for the server's
/// `listen`.
fn server_address(url: &str) -> Result<(String, u16)> {
    let rest = url
        .strip_prefix("nats://")
        .ok_or_else(|| anyhow::anyhow!("--nats-url {url:?}: give nats://HOST:PORT"))?;
    if rest.contains('@') || rest.contains('/') || rest.contains(',') {
        bail!("--nats-url {url:?}: give nats://HOST:PORT (no credentials, path or second server)");
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse::<u16>()
                .with_context(|| format!("--nats-url {url:?}: the port"))?,
        ),
        None => (rest.to_string(), 4222),
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
    {
        bail!("--nats-url {url:?}: not a host name or address");
    }
    Ok((host, port))
}
