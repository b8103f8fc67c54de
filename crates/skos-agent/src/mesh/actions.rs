//! The mesh healer's actions. Every interface, peer, file, route and
//! program comes from the configuration; a command only names which
//! configured interface or peer it is about.

use skos_core::escape::ShowPath;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use skos_core::config::{FailoverConfig, MeshConfig, MeshInterface, MeshPeer, RestartMethod};
use skos_core::protocol::{Change, ResultStatus};

use super::error::MeshError;
use super::exec::{self, argv};
use super::iproute;
use super::probe::{self, ProbeOpts};
use super::template::{self, PeerKeys};
use super::wg;
use crate::Outcome;

fn timeout(cfg: &MeshConfig) -> Duration {
    Duration::from_secs_f64(cfg.command_timeout)
}

fn outcome(status: ResultStatus, message: String, details: Value, changes: Vec<Change>) -> Outcome {
    Outcome {
        status,
        message,
        changes,
        details: match details {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    }
}

/// Is the interface there, up and readable by `wg`? `Err` says why not.
pub fn check_up(cfg: &MeshConfig, name: &str) -> Result<wg::Dump, MeshError> {
    let t = timeout(cfg);
    match iproute::link(&cfg.tools.ip, name, t)? {
        Some(l) if l.up => {}
        Some(_) => {
            return Err(MeshError::Down {
                interface: name.to_string(),
            })
        }
        None => {
            return Err(MeshError::Missing {
                interface: name.to_string(),
            })
        }
    }
    read_dump(cfg, name)
}

/// `wg show <name> dump`, parsed; the text (which holds the private key)
/// is wiped as soon as it is parsed.
pub fn read_dump(cfg: &MeshConfig, name: &str) -> Result<wg::Dump, MeshError> {
    let out = exec::run(
        &argv(&[cfg.tools.wg.as_str(), "show", name, "dump"]),
        timeout(cfg),
    )?;
    if !out.success() {
        return Err(MeshError::WgShow {
            interface: name.to_string(),
            output: out.describe(),
        });
    }
    let mut text = out.stdout;
    let parsed = wg::parse_dump(&text).map_err(|source| MeshError::Dump {
        interface: name.to_string(),
        source,
    });
    wipe(&mut text);
    parsed
}

/// Overwrite text that held a private key before it is freed.
pub fn wipe(s: &mut String) {
    let mut bytes = std::mem::take(s).into_bytes();
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

fn restart_once(cfg: &MeshConfig, itf: &MeshInterface, log: &mut Vec<String>) -> bool {
    let t = timeout(cfg);
    let run = |a: Vec<String>, log: &mut Vec<String>| match exec::run(&a, t) {
        Ok(o) => {
            let ok = o.success();
            log.push(if ok {
                format!("{}: ok", a[1..].join(" "))
            } else {
                format!("{}: {}", a[1..].join(" "), o.describe())
            });
            ok
        }
        Err(e) => {
            log.push(e.to_string());
            false
        }
    };
    match itf.restart {
        RestartMethod::WgQuick => {
            let target = itf.config_file().escaped().to_string();
            let exists = iproute::link(&cfg.tools.ip, &itf.name, t)
                .ok()
                .flatten()
                .is_some();
            if exists {
                // A failed `down` is not the end: `up` says what is wrong.
                run(argv(&[cfg.tools.wg_quick.as_str(), "down", &target]), log);
            } else {
                log.push(format!("{} is gone: no wg-quick down", itf.name));
            }
            run(argv(&[cfg.tools.wg_quick.as_str(), "up", &target]), log)
        }
        RestartMethod::Systemd => run(
            argv(&[
                cfg.tools.systemctl.as_str(),
                "restart",
                "--",
                &itf.unit_name(),
            ]),
            log,
        ),
        RestartMethod::Command => run(itf.restart_command.clone(), log),
    }
}

fn method_name(m: RestartMethod) -> &'static str {
    match m {
        RestartMethod::WgQuick => "wg-quick",
        RestartMethod::Systemd => "systemd",
        RestartMethod::Command => "command",
    }
}

/// `restart_wireguard`: the configured way, up to `reconnect_attempts`
/// times, `reconnect_delay_seconds` apart, until the interface is up and
/// readable.
pub fn restart(cfg: &MeshConfig, itf: &MeshInterface) -> Outcome {
    let before = match check_up(cfg, &itf.name) {
        Ok(_) => "up".to_string(),
        Err(e) => e.to_string(),
    };
    let attempts = cfg.reconnect_attempts.max(1);
    let mut log = Vec::new();
    let mut last_err = String::new();
    for attempt in 1..=attempts {
        if attempt > 1 {
            std::thread::sleep(Duration::from_secs_f64(cfg.reconnect_delay_seconds));
        }
        let ran = restart_once(cfg, itf, &mut log);
        match check_up(cfg, &itf.name) {
            Ok(dump) if ran => {
                tracing::info!(interface = %itf.name, attempt, "wireguard interface restarted");
                return outcome(
                    ResultStatus::Succeeded,
                    format!(
                        "{} restarted ({}) on attempt {attempt} of {attempts}",
                        itf.name,
                        method_name(itf.restart)
                    ),
                    json!({
                        "interface": itf.name, "method": method_name(itf.restart),
                        "attempts": attempt, "log": log, "peers": dump.peers.len(),
                    }),
                    vec![Change {
                        target: format!("wireguard:{}", itf.name),
                        before: before.clone(),
                        after: "up".into(),
                    }],
                );
            }
            Ok(_) => last_err = "the restart command failed".into(),
            Err(e) => last_err = e.to_string(),
        }
        tracing::warn!(interface = %itf.name, attempt, error = %last_err, "wireguard restart attempt failed");
    }
    let detail = log.last().cloned().unwrap_or_default();
    outcome(
        ResultStatus::Failed,
        format!(
            "{} did not come back after {attempts} attempts ({}): {last_err}; {detail}",
            itf.name,
            method_name(itf.restart)
        ),
        json!({"interface": itf.name, "method": method_name(itf.restart), "attempts": attempts, "log": log}),
        Vec::new(),
    )
}

fn read_key(path: &Path, what: &str) -> Result<String, MeshError> {
    let text = fs::read_to_string(path).map_err(|source| MeshError::KeyFile {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let key = text.trim().to_string();
    let mut text = text;
    wipe(&mut text);
    if skos_core::config::is_wg_key(&key) {
        Ok(key)
    } else {
        Err(MeshError::NotAKey {
            what: what.to_string(),
            path: path.to_path_buf(),
        })
    }
}

fn fingerprint(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    format!("sha256:{}", &hex::encode(h)[..16])
}

/// The previous config is kept beside the new one as `<file>.prev`.
pub fn previous_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".prev");
    PathBuf::from(s)
}

/// Render, validate, keep the previous file, write the new one (mode 0600,
/// atomically). Returns (previous fingerprint, new fingerprint, kept at).
fn write_config(
    cfg: &MeshConfig,
    itf: &MeshInterface,
) -> Result<(String, String, Option<PathBuf>), MeshError> {
    let key_file = itf
        .private_key_file
        .as_ref()
        .ok_or_else(|| MeshError::NoPrivateKeyFile {
            interface: itf.name.clone(),
        })?;
    let mut private_key = read_key(key_file, "private_key_file")?;
    let template_text = match &itf.template {
        Some(t) => fs::read_to_string(t).map_err(|source| MeshError::Template {
            path: t.clone(),
            source,
        })?,
        None => template::BUILTIN.to_string(),
    };
    let mine: Vec<&MeshPeer> = cfg
        .peers
        .iter()
        .filter(|p| p.interface == itf.name)
        .collect();
    let mut keys = Vec::new();
    for p in &mine {
        let psk = match &p.preshared_key_file {
            Some(f) => Some(read_key(f, &format!("preshared_key_file of {}", p.name))?),
            None => None,
        };
        keys.push(PeerKeys {
            peer: p,
            preshared_key: psk,
        });
    }
    let rendered = template::render(&template_text, itf, &private_key, &keys);
    wipe(&mut private_key);
    for k in &mut keys {
        if let Some(psk) = k.preshared_key.as_mut() {
            wipe(psk);
        }
    }
    let mut text = rendered.map_err(MeshError::Render)?;
    let result = (|| {
        let checked = template::validate(&text).map_err(|source| MeshError::Rendered {
            interface: itf.name.clone(),
            source,
        })?;
        for p in &mine {
            if let Some(k) = &p.public_key {
                if !checked.peer_keys.contains(k) {
                    return Err(MeshError::PeerMissing {
                        peer: p.name.clone(),
                    });
                }
            }
        }
        let path = itf.config_file();
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(MeshError::NoDirectory { path: path.clone() });
        };
        let prev = previous_path(&path);
        let Some(prev_name) = prev.file_name() else {
            return Err(MeshError::NoDirectory { path: prev.clone() });
        };
        // Everything through the config dir's handle: the dir is opened
        // without following symlinks and must be SKOS's own (not writable
        // by others); the old file is read without following a symlink;
        // `.prev` and the new file are temp files created exclusively
        // (0600) and renamed into place, so a planted symlink is replaced,
        // never written through.
        let dir = skos_fs::Dir::private(dir).map_err(crate::Error::from)?;
        let old = match dir.read(name) {
            Ok(old) => old,
            Err(e) => {
                tracing::warn!(path = %path.escaped(), error = %e, "previous config not read; not kept");
                None
            }
        };
        let kept = match &old {
            Some(bytes) => {
                dir.write_atomic(prev_name, bytes)
                    .map_err(|source| MeshError::KeepPrevious {
                        path: prev.clone(),
                        source,
                    })?;
                Some(prev.clone())
            }
            None => None,
        };
        dir.write_atomic(name, text.as_bytes())
            .map_err(crate::Error::from)?;
        Ok((
            old.as_deref()
                .map(fingerprint)
                .unwrap_or_else(|| "absent".into()),
            fingerprint(text.as_bytes()),
            kept,
        ))
    })();
    wipe(&mut text);
    result
}

/// `regenerate_config`: render the interface's file from its template,
/// validate it, keep the previous one, write it, then restart.
pub fn regenerate(cfg: &MeshConfig, itf: &MeshInterface) -> Outcome {
    let path = itf.config_file();
    let (before, after, kept) = match write_config(cfg, itf) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(interface = %itf.name, error = %e, "config not regenerated");
            return outcome(
                ResultStatus::Failed,
                format!("{} not regenerated: {e}", path.escaped()),
                json!({"interface": itf.name, "config": path}),
                Vec::new(),
            );
        }
    };
    tracing::info!(interface = %itf.name, path = %path.escaped(), kept = ?kept, "wireguard config regenerated");
    let change = Change {
        target: path.escaped().to_string(),
        before,
        after,
    };
    let restarted = restart(cfg, itf);
    let mut details = restarted.details.clone();
    details.insert("config".into(), json!(path));
    details.insert("previous".into(), json!(kept));
    let mut changes = vec![change];
    changes.extend(restarted.changes.clone());
    let kept_text = kept
        .as_ref()
        .map(|k| format!(" (previous kept at {})", k.escaped()))
        .unwrap_or_default();
    Outcome {
        status: restarted.status,
        message: format!(
            "{} regenerated{kept_text}; {}",
            path.escaped(),
            restarted.message
        ),
        changes,
        details,
    }
}

pub fn probe_opts(cfg: &MeshConfig, peer: Option<&MeshPeer>) -> ProbeOpts {
    ProbeOpts {
        method: cfg.probe.method,
        count: cfg.probe.count,
        interval: Duration::from_secs_f64(cfg.probe.interval),
        timeout: Duration::from_secs_f64(cfg.probe.timeout),
        tcp_port: peer.and_then(|p| p.tcp_port).or(cfg.probe.tcp_port),
        bind_device: None,
    }
}

/// `ping_peer`: a fresh probe of each named peer; the result carries it.
/// `resolved` is true when every peer answered every probe.
pub fn ping(cfg: &MeshConfig, peers: &[MeshPeer]) -> Outcome {
    let mut reports = Map::new();
    let mut all_answered = true;
    let mut summary = Vec::new();
    let mut probed = 0;
    for p in peers {
        let Some(addr) = p.address else {
            reports.insert(p.name.clone(), json!({"error": "no address configured"}));
            all_answered = false;
            continue;
        };
        match probe::probe(addr, &probe_opts(cfg, Some(p))) {
            Ok(r) => {
                probed += 1;
                all_answered &= r.received == r.sent;
                summary.push(format!(
                    "{} ({addr}) {}/{} answered by {}{}",
                    p.name,
                    r.received,
                    r.sent,
                    r.method,
                    r.rtt_avg_ms
                        .map(|ms| format!(", {ms:.1} ms"))
                        .unwrap_or_default()
                ));
                reports.insert(p.name.clone(), json!(r));
            }
            Err(e) => {
                all_answered = false;
                summary.push(format!("{}: not probed: {e}", p.name));
                reports.insert(p.name.clone(), json!({"error": e.to_string()}));
            }
        }
    }
    if probed == 0 {
        return outcome(
            ResultStatus::Failed,
            format!("no peer could be probed: {}", summary.join("; ")),
            json!({"peers": reports, "reachable": false, "resolved": false}),
            Vec::new(),
        );
    }
    outcome(
        ResultStatus::Succeeded,
        summary.join("; "),
        json!({"peers": reports, "reachable": all_answered, "resolved": all_answered}),
        Vec::new(),
    )
}

fn describe_route(r: &[iproute::Route]) -> String {
    match r.first() {
        None => "no route".into(),
        Some(r) => {
            let mut s = String::new();
            if let Some(g) = &r.gateway {
                s.push_str(&format!("via {g} "));
            }
            if let Some(d) = &r.dev {
                s.push_str(&format!("dev {d}"));
            }
            s.trim().to_string()
        }
    }
}

fn describe_via(v: &skos_core::config::RouteVia) -> String {
    describe_route(&[iproute::Route {
        dst: String::new(),
        gateway: v.gateway.map(|g| g.to_string()),
        dev: v.dev.clone(),
    }])
}

/// Point every network of a failover at `to`. Returns the changes made.
pub fn switch_routes(
    cfg: &MeshConfig,
    f: &FailoverConfig,
    to: &skos_core::config::RouteVia,
) -> Result<Vec<Change>, (Vec<Change>, crate::Error)> {
    let t = timeout(cfg);
    let mut changes = Vec::new();
    for net in &f.networks {
        let before = iproute::routes(&cfg.tools.ip, net, t)
            .map(|r| describe_route(&r))
            .unwrap_or_else(|e| format!("unknown ({e})"));
        if let Err(e) = iproute::replace(&cfg.tools.ip, net, to, t) {
            return Err((changes, e));
        }
        changes.push(Change {
            target: format!("route {net}"),
            before,
            after: describe_via(to),
        });
    }
    Ok(changes)
}

/// `failover_route`: the peer's networks go through the backup path; they
/// come back (in `sense`) once the primary answered for `hold_seconds`.
pub fn failover(cfg: &MeshConfig, peer: &MeshPeer) -> Outcome {
    let Some(f) = &peer.failover else {
        return outcome(
            ResultStatus::Unsupported,
            format!(
                "no failover configured for peer {} (mesh.peers[].failover)",
                peer.name
            ),
            json!({"peer": peer.name}),
            Vec::new(),
        );
    };
    let details = json!({
        "peer": peer.name, "networks": f.networks, "via": describe_via(&f.backup),
        "primary": describe_via(&f.primary), "hold_seconds": f.hold_seconds,
    });
    match switch_routes(cfg, f, &f.backup) {
        Ok(changes) => {
            tracing::info!(peer = %peer.name, networks = ?f.networks, via = %describe_via(&f.backup), "routes failed over to the backup path");
            outcome(
                ResultStatus::Succeeded,
                format!(
                    "{} now {} (back to {} once it answers for {} s)",
                    f.networks.join(", "),
                    describe_via(&f.backup),
                    describe_via(&f.primary),
                    f.hold_seconds
                ),
                details,
                changes,
            )
        }
        Err((changes, e)) => {
            // Leave no half-switched state: put back what was switched.
            if !changes.is_empty() {
                let done = FailoverConfig {
                    networks: f.networks[..changes.len()].to_vec(),
                    ..f.clone()
                };
                if let Err((_, e2)) = switch_routes(cfg, &done, &f.primary) {
                    tracing::error!(peer = %peer.name, error = %e2, "could not undo a partial failover");
                }
            }
            outcome(
                ResultStatus::Failed,
                format!("failover for {} failed: {e}", peer.name),
                details,
                Vec::new(),
            )
        }
    }
}
