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

pub fn nats_config(nodes: &[String], out: &Path, force: bool) -> Result<ExitCode> {
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
    // Operators read: a key of their own, not the coordinator's.
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
    for name in &names {
        let (seed, public) = Signer::generate()?;
        write_seed(&out.join(format!("{name}.nk")), &seed, force)?;
        users.push(format!(
            "    # agent {name}\n    {{ nkey: {public}, {} }}",
            agent_permissions(name)
        ));
    }
    println!(
        "# nats-server authorization for a SKOS fleet, written by `skos fleet nats-config`.\n\
# Login seeds: {dir}/coordinator.nk for the coordinator, {dir}/operator.nk for operators'\n\
# skos status, skos audit, skos silence and skos node forget, {dir}/<node>.nk for each agent (set\n\
# nats.nkey_seed_file to it). {dir}/coordinator-signing.nk signs commands\n\
# (trust.signing_key_file only; never a login key). Unknown clients cannot connect.\n\
authorization {{\n  users = [\n{}\n  ]\n}}",
        users.join("\n"),
        dir = out.escaped()
    );
    eprintln!(
        "skos: wrote {} seed files to {} (mode 600). Coordinator: nats.nkey_seed_file: {}, trust.signing_key_file: {} (a separate key: never use a login key to sign commands). Operators: nats.nkey_seed_file: {}. Agents: trust.coordinator_keys: [{signing_public}]",
        names.len() + 3,
        out.escaped(),
        out.join("coordinator.nk").escaped(),
        out.join("coordinator-signing.nk").escaped(),
        out.join("operator.nk").escaped()
    );
    Ok(ExitCode::SUCCESS)
}
