//! `skos fleet nats-config`: a nats-server authorization block for a fleet,
//! where each node's agent may publish only its own heartbeats, alerts and
//! results, and read only its own commands. The server config holds public
//! keys only; the seeds are written to files, one per node.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use skos_bus::subjects;
use skos_bus::trust::Signer;
use skos_core::NodeName;

/// The permissions of one node's agent, in nats-server syntax: its own
/// heartbeats, alerts, results and chain announcements out; its own inbox
/// and chain steps in, with replies to those steps (`allow_responses`).
pub fn agent_permissions(node: &NodeName) -> String {
    let consumer = subjects::agent_consumer(node);
    let commands = subjects::STREAM_COMMANDS;
    let publish = [
        subjects::heartbeat(node),
        subjects::alert(node),
        subjects::result(node),
        subjects::chain_control(node),
        "$JS.API.INFO".to_string(),
        "$JS.API.STREAM.INFO.*".to_string(),
        format!("$JS.API.CONSUMER.INFO.{commands}.{consumer}"),
        format!("$JS.API.CONSUMER.CREATE.{commands}.{consumer}"),
        format!("$JS.API.CONSUMER.CREATE.{commands}.{consumer}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{commands}.{consumer}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{commands}.{consumer}"),
        format!("$JS.ACK.{commands}.{consumer}.>"),
    ];
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }}, allow_responses: true }}",
        list(&publish),
        list(&[format!("_INBOX_{node}.>"), subjects::chain(node)])
    )
}

/// The file names the coordinator's seeds take in --out: no node may
/// have them (its login seed would replace one of them).
const COORDINATOR_FILES: [&str; 2] = ["coordinator", "coordinator-signing"];

fn write_seed(path: &Path, seed: &str, force: bool) -> Result<()> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true).mode(0o600);
    if force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let mut f = open.open(path).with_context(|| {
        if path.exists() && !force {
            format!(
                "{} exists: replacing a seed changes keys agents and the server already use (--force to replace)",
                path.display()
            )
        } else {
            format!("cannot write {}", path.display())
        }
    })?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    writeln!(f, "{seed}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn nats_config(nodes: &[String], out: &Path, force: bool) -> Result<ExitCode> {
    let mut names = Vec::new();
    for n in nodes {
        match NodeName::parse(n.trim()) {
            Ok(name) if COORDINATOR_FILES.contains(&name.as_str()) => {
                bail!("--nodes: {name} is the name of the coordinator's own key file; name the node otherwise")
            }
            Ok(name) if !names.contains(&name) => names.push(name),
            Ok(name) => bail!("node {name} is named twice"),
            Err(e) => bail!("--nodes: {e}"),
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod {}", out.display()))?;
    // Nothing is written if any seed is there already (unless --force).
    let files: Vec<std::path::PathBuf> = COORDINATOR_FILES
        .iter()
        .map(|f| out.join(format!("{f}.nk")))
        .chain(names.iter().map(|n| out.join(format!("{n}.nk"))))
        .collect();
    if let Some(there) = files.iter().find(|p| p.exists()).filter(|_| !force) {
        bail!(
            "{} exists: replacing seeds changes keys agents and the server already use (--force to replace them all)",
            there.display()
        );
    }
    let (coord_seed, coord_public) = Signer::generate()?;
    write_seed(&out.join("coordinator.nk"), &coord_seed, force)?;
    // Commands are signed with a key of their own: a NATS server signs
    // its login nonce with the login key, whatever nonce it chose.
    let (signing_seed, signing_public) = Signer::generate()?;
    write_seed(&out.join("coordinator-signing.nk"), &signing_seed, force)?;
    let mut users = vec![format!(
        "    # the coordinator (and operators' skos status / audit)\n    {{ nkey: {coord_public}, permissions: {{ publish: \">\", subscribe: \">\" }} }}"
    )];
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
# Login seeds: {dir}/coordinator.nk for the coordinator, {dir}/<node>.nk for each agent\n\
# (set nats.nkey_seed_file to it). {dir}/coordinator-signing.nk signs commands\n\
# (trust.signing_key_file only; never a login key). Unknown clients cannot connect.\n\
authorization {{\n  users = [\n{}\n  ]\n}}",
        users.join("\n"),
        dir = out.display()
    );
    eprintln!(
        "skos: wrote {} seed files to {} (mode 600). Coordinator: nats.nkey_seed_file: {}, trust.signing_key_file: {} (a separate key: never use a login key to sign commands). Agents: trust.coordinator_keys: [{signing_public}]",
        names.len() + 2,
        out.display(),
        out.join("coordinator.nk").display(),
        out.join("coordinator-signing.nk").display()
    );
    Ok(ExitCode::SUCCESS)
}
