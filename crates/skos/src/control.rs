//! `skos silence` and `skos node forget`: an operator's change, sent to the
//! leading coordinator as a control request over NATS (NATS_URL set), or
//! to `skos up`'s HTTP API (its address from `--http` or `http.listen`,
//! the bearer token from `http.token_file`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use skos_bus::{Bus, NatsBus};
use skos_coordinator::control::{ControlReply, ControlRequest};
use skos_core::config::{Config, HttpListen};
use skos_core::escape::ShowPath;
use skos_core::silence::{Silence, SilenceSpec};
use skos_core::timefmt;
use skos_core::NodeName;

use crate::cli::{ControlArgs, NodeCmd, SilenceCmd};

/// How long a request may wait for its answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Who asks: `--by`, else the login name.
fn who(args: &ControlArgs) -> Result<String> {
    if let Some(by) = &args.by {
        return Ok(by.clone());
    }
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .ok_or_else(|| anyhow!("say who asks with --by (no SUDO_USER, USER or LOGNAME set)"))
}

fn time(flag: &str, text: &str) -> Result<timefmt::Timestamp> {
    timefmt::parse(text)
        .ok_or_else(|| anyhow!("{flag} {text:?}: not a time (RFC 3339, e.g. 2026-03-01T06:00:00Z)"))
}

/// `skos silence ...`
pub async fn silence(cmd: SilenceCmd) -> Result<ExitCode> {
    match cmd {
        SilenceCmd::Add {
            node,
            kind,
            problem,
            action,
            duration,
            until,
            start,
            every,
            comment,
            control,
        } => {
            let duration_seconds = duration
                .map(|d| {
                    humantime::parse_duration(&d)
                        .map(|d| d.as_secs())
                        .with_context(|| format!("--for {d:?}: a duration (90m, 4h, 2days)"))
                })
                .transpose()?;
            let spec = SilenceSpec {
                node: NodeName::parse(&node).context("--node")?,
                kind,
                problem,
                action,
                start: start.as_deref().map(|s| time("--start", s)).transpose()?,
                end: until.as_deref().map(|s| time("--until", s)).transpose()?,
                duration_seconds,
                every,
                comment,
                by: who(&control)?,
            };
            // Checked here first, for a clear error before anything is sent
            // (the coordinator checks again).
            spec.build(chrono::Utc::now())?;
            let reply = ask(&control, ControlRequest::SilenceAdd { silence: spec }).await?;
            show(&control, &reply, |r| {
                for s in &r.silences {
                    println!("{}", line(s));
                }
            })
        }
        SilenceCmd::List { control } => {
            let reply = ask(&control, ControlRequest::SilenceList).await?;
            show(&control, &reply, |r| {
                if r.silences.is_empty() {
                    println!("no silences");
                }
                for s in &r.silences {
                    println!("{}", line(s));
                }
            })
        }
        SilenceCmd::Expire { id, control } => {
            let by = who(&control)?;
            let reply = ask(&control, ControlRequest::SilenceExpire { id, by }).await?;
            show(&control, &reply, |r| println!("{}", r.message))
        }
    }
}

/// `skos node ...`
pub async fn node(cmd: NodeCmd) -> Result<ExitCode> {
    match cmd {
        NodeCmd::Forget {
            name,
            force,
            control,
        } => {
            let by = who(&control)?;
            let node = NodeName::parse(&name).context("node")?;
            let reply = ask(&control, ControlRequest::NodeForget { node, by, force }).await?;
            show(&control, &reply, |r| println!("{}", r.message))
        }
    }
}

/// `skos approvals`: the plans waiting for a person.
pub async fn approvals(control: ControlArgs) -> Result<ExitCode> {
    let reply = ask(&control, ControlRequest::ApprovalList).await?;
    show(&control, &reply, |r| {
        if r.approvals.is_empty() {
            println!("no plan waits for approval");
        }
        for a in &r.approvals {
            println!(
                "{}  {} on {}  until {}: {}",
                a.id,
                a.plan,
                a.node,
                timefmt::format(&a.expires_at),
                a.reason.escaped()
            );
        }
    })
}

/// `skos approve ID` (`approve`) or `skos deny ID`.
pub async fn decide(id: String, approve: bool, control: ControlArgs) -> Result<ExitCode> {
    let by = who(&control)?;
    let req = if approve {
        ControlRequest::Approve { id, by }
    } else {
        ControlRequest::Deny { id, by }
    };
    let reply = ask(&control, req).await?;
    show(&control, &reply, |r| println!("{}", r.message))
}

/// One silence on one line.
fn line(s: &Silence) -> String {
    let when = s.when(chrono::Utc::now());
    format!(
        "{}  {}  {}  by {}: {}",
        s.id,
        s.scope(),
        when,
        s.by,
        s.comment.escaped()
    )
}

/// Print the reply (as JSON with `--json`), or fail with the refusal.
fn show(
    args: &ControlArgs,
    reply: &ControlReply,
    print: impl Fn(&ControlReply),
) -> Result<ExitCode> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(reply)?);
    }
    if let Some(e) = &reply.error {
        bail!("refused: {e}");
    }
    if !args.json {
        print(reply);
    }
    Ok(ExitCode::SUCCESS)
}

/// Send `req` and read the reply.
async fn ask(args: &ControlArgs, req: ControlRequest) -> Result<ControlReply> {
    let cfg = crate::commands::load_quiet(&args.config)?;
    if std::env::var_os("NATS_URL").is_some() && args.http.is_none() {
        let opts = crate::commands::operator_options(&cfg, "skos-control")?;
        let bus = Bus::Nats(NatsBus::connect(&opts).await?);
        let body =
            match bus.request_control(&req, TIMEOUT).await {
                Ok(body) => body,
                Err(e @ skos_bus::Error::Denied { .. }) => bail!(
                    "this credential may not send control requests (the operator's and the \
                 coordinator's may; see `skos fleet nats-config`): {e}"
                ),
                Err(e) => return Err(e).context(
                    "no coordinator leads right now (none running, or a standby is waiting for \
                     the leader's lease to run out); only the leader answers",
                ),
            };
        return serde_json::from_slice(&body).context("the coordinator's reply");
    }
    let cfg2 = cfg.clone();
    let http = args.http.clone();
    tokio::task::spawn_blocking(move || over_http(&cfg2, http.as_deref(), &req))
        .await
        .context("HTTP request")?
}

/// Percent-encode a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `req` as `skos up`'s HTTP API takes it.
fn over_http(cfg: &Config, flag: Option<&str>, req: &ControlRequest) -> Result<ControlReply> {
    let text = flag.unwrap_or(cfg.http.listen.as_str());
    let addr = match HttpListen::parse(text).map_err(|e| anyhow!("http address {text:?}: {e}"))? {
        HttpListen::Off => bail!(
            "NATS_URL is not set and http.listen is off: set NATS_URL to reach a coordinator, or give --http ADDR of `skos up`"
        ),
        HttpListen::At(a) => a,
    };
    if cfg.http.tls.enabled() {
        bail!("skos up serves HTTPS here (http.tls): use the API with a client that trusts its certificate, or set NATS_URL");
    }
    let base = format!("http://{addr}/api/v1");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    let token = || -> Result<String> {
        let path = cfg.http.token_file.as_ref().ok_or_else(|| {
            anyhow!("http.token_file is not set: `skos up` refuses writes without a token")
        })?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("http.token_file {}", path.escaped()))?;
        Ok(format!(
            "Bearer {}",
            text.lines().next().unwrap_or_default().trim()
        ))
    };
    let sent = match req {
        ControlRequest::SilenceList => agent.get(&format!("{base}/silences")).call(),
        ControlRequest::SilenceAdd { silence } => agent
            .post(&format!("{base}/silences"))
            .header("Authorization", &token()?)
            .send_json(silence),
        ControlRequest::SilenceExpire { id, by } => agent
            .delete(&format!("{base}/silences/{}?by={}", encode(id), encode(by)))
            .header("Authorization", &token()?)
            .call(),
        ControlRequest::NodeForget { node, by, force } => agent
            .post(&format!(
                "{base}/nodes/{node}/forget?by={}&force={force}",
                encode(by)
            ))
            .header("Authorization", &token()?)
            .send_empty(),
        ControlRequest::ApprovalList => agent.get(&format!("{base}/approvals")).call(),
        ControlRequest::Approve { id, by } | ControlRequest::Deny { id, by } => {
            let verb = if matches!(req, ControlRequest::Approve { .. }) {
                "approve"
            } else {
                "deny"
            };
            agent
                .post(&format!(
                    "{base}/approvals/{}/{verb}?by={}",
                    encode(id),
                    encode(by)
                ))
                .header("Authorization", &token()?)
                .send_empty()
        }
    };
    let mut resp = sent.with_context(|| {
        format!("no answer from {base} (is `skos up` running with HTTP on {addr}?)")
    })?;
    let code = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of {base}"))?;
    let reply: ControlReply =
        serde_json::from_str(&body).with_context(|| format!("{base} answered {code}: {body}"))?;
    if code.as_u16() == 503 {
        bail!("{base} answered 503: {}", reply.error.unwrap_or_default());
    }
    Ok(reply)
}
