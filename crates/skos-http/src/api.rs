//! The router and its handlers. The router is built from one table of
//! routes ([`routes`] lists them), which `docs/openapi.yaml` must match (a
//! test checks it).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use skos_bus::audit_follow::{self, AuditSource};
use skos_coordinator::control::{ControlReply, ControlRequest, Refusal};
use skos_coordinator::status::{NodeOrder, Status, StatusQuery};
use skos_core::NodeName;
use tokio::sync::{broadcast, watch};

use crate::auth::Token;
use crate::feed::{Feed, Record};
use crate::{metrics, page, Sources};

/// Every route the router serves: (method, path as OpenAPI writes it,
/// handler). The router is built from this table, and `docs/openapi.yaml`
/// must list exactly its paths (a test checks it).
fn table() -> Vec<(&'static str, &'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        ("get", "/", get(page::index)),
        ("get", "/assets/{file}", get(page::asset)),
        ("get", "/healthz", get(healthz)),
        ("get", "/metrics", get(metrics_text)),
        ("get", "/api/v1/status", get(status)),
        ("get", "/api/v1/alerts", get(alerts)),
        ("get", "/api/v1/actions", get(actions)),
        ("get", "/api/v1/audit", get(audit)),
        ("get", "/api/v1/events", get(events)),
        ("get", "/api/v1/silences", get(silences)),
        ("post", "/api/v1/silences", post(silence_add)),
        ("delete", "/api/v1/silences/{id}", delete(silence_expire)),
        ("post", "/api/v1/nodes/{node}/forget", post(node_forget)),
        ("get", "/api/v1/approvals", get(approvals)),
        ("post", "/api/v1/approvals/{id}/approve", post(approve)),
        ("post", "/api/v1/approvals/{id}/deny", post(deny)),
    ]
}

/// Every route the router serves, `(method, path)`.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The most audit records one page holds.
pub const MAX_AUDIT_PAGE: usize = 1000;
/// Audit records in a page when the request names no `limit`.
pub const DEFAULT_AUDIT_PAGE: usize = 100;
/// How long a status request may take before the API says no coordinator
/// answers.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// What the handlers share.
pub struct AppState {
    /// Where the figures come from.
    pub sources: Sources,
    /// The followed audit trail.
    pub feed: Feed,
    /// The token writes must carry (none: writes are refused).
    pub token: Option<Token>,
    /// Set when the server stops: open event streams end.
    closing: watch::Receiver<bool>,
    close: watch::Sender<bool>,
}

/// A status reply, and who gave it.
pub struct Answer {
    /// The reply as it came (JSON: a status or a refusal).
    pub body: bytes::Bytes,
    /// The reply read as a status (`None`: a refusal).
    pub status: Option<Status>,
    /// `leader`, `standby` (another coordinator answered), or `single`
    /// (no election).
    pub role: &'static str,
}

/// Why no status could be given.
#[derive(Debug)]
pub enum NoStatus {
    /// Nobody answered within the time.
    NoAnswer(String),
}

impl AppState {
    /// The state of a server over `sources`.
    pub fn new(sources: Sources, feed: Feed, token: Option<Token>) -> Self {
        let (close, closing) = watch::channel(false);
        Self {
            sources,
            feed,
            token,
            closing,
            close,
        }
    }

    /// End the open event streams (the server is stopping).
    pub fn close(&self) {
        let _ = self.close.send(true);
    }

    /// Ask the coordinator (over the bus: a standby's question reaches the
    /// leader) for the status `query` selects.
    pub async fn status(&self, query: &StatusQuery, timeout: Duration) -> Result<Answer, NoStatus> {
        let body = self
            .sources
            .bus
            .request_status_query(query, timeout)
            .await
            .map_err(|e| NoStatus::NoAnswer(e.to_string()))?;
        let status = Status::from_reply(&body).ok();
        let role = match (
            &self.sources.holder,
            status.as_ref().and_then(|s| s.leader.as_ref()),
        ) {
            (None, _) => "single",
            (Some(mine), Some(l)) if &l.holder == mine => "leader",
            (Some(_), _) => "standby",
        };
        Ok(Answer { body, status, role })
    }
}

impl AppState {
    /// Send the coordinator an operator's control request (over the bus: a
    /// standby's request reaches the leader) and read its reply.
    pub async fn control(
        &self,
        req: &ControlRequest,
        timeout: Duration,
    ) -> Result<ControlReply, NoStatus> {
        let body = self
            .sources
            .bus
            .request_control(req, timeout)
            .await
            .map_err(|e| NoStatus::NoAnswer(e.to_string()))?;
        serde_json::from_slice(&body)
            .map_err(|e| NoStatus::NoAnswer(format!("unreadable control reply: {e}")))
    }
}

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    table()
        .into_iter()
        .fold(Router::new(), |r, (_, path, handler)| {
            r.route(path, handler)
        })
        .fallback(not_found)
        .with_state(state)
}

/// A request the API cannot answer: its status code and why, as JSON
/// (`{"error": ..., "role": ..., "detail": ...}`).
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    message: String,
    /// With no status: whether this process stands by.
    role: Option<&'static str>,
    detail: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(role) = self.role {
            body["role"] = json!(role);
        }
        if let Some(d) = self.detail {
            body["detail"] = json!(d);
        }
        match self.role {
            Some(role) => (self.code, role_header(role), Json(body)).into_response(),
            None => (self.code, Json(body)).into_response(),
        }
    }
}

fn error(code: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        message: message.into(),
        role: None,
        detail: None,
    }
}

async fn not_found() -> ApiError {
    error(StatusCode::NOT_FOUND, "no such path: see docs/openapi.yaml")
}

/// A failed status request as the API answers it: 503, saying whether this
/// process is a standby.
fn unanswered(state: &AppState, NoStatus::NoAnswer(why): NoStatus) -> ApiError {
    let (role, message) = match state.sources.holder {
        Some(_) => (
            "standby",
            "no coordinator leads right now (this one stands by; the leader's lease may be running out)",
        ),
        None => ("single", "the coordinator did not answer"),
    };
    tracing::debug!(error = %why, "status request unanswered");
    ApiError {
        code: StatusCode::SERVICE_UNAVAILABLE,
        message: message.into(),
        role: Some(role),
        detail: Some(why),
    }
}

/// The guard every write route calls first: 403 when no token is set
/// (writes are off), 401 without the right `Authorization: Bearer`.
pub fn writable(token: Option<&Token>, headers: &HeaderMap) -> Result<(), ApiError> {
    match token {
        None => Err(error(
            StatusCode::FORBIDDEN,
            "writes are off: set http.token_file to a file holding a token",
        )),
        Some(t) if t.admits(headers) => Ok(()),
        Some(_) => Err(error(
            StatusCode::UNAUTHORIZED,
            "a write needs Authorization: Bearer <the token in http.token_file>",
        )),
    }
}

async fn healthz() -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})),
    )
        .into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let text = metrics::render(&state).await;
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// The query string of `/api/v1/status` (and of the alert and action
/// lists): the same choices as `skos status`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusParams {
    /// Which page of nodes, from 1.
    page: Option<usize>,
    per_page: Option<usize>,
    /// One node in full.
    node: Option<String>,
    /// Only nodes that are not healthy.
    problems: Option<bool>,
    /// By name, not problems first.
    by_name: Option<bool>,
}

impl StatusParams {
    fn query(&self) -> Result<StatusQuery, ApiError> {
        let node = self
            .node
            .as_deref()
            .map(NodeName::parse)
            .transpose()
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("node: {e}")))?;
        if self.page == Some(0) {
            return Err(error(StatusCode::BAD_REQUEST, "page: pages count from 1"));
        }
        Ok(StatusQuery {
            page: self.page.unwrap_or(1) - 1,
            per_page: self.per_page.unwrap_or(0),
            node,
            problem_nodes_only: self.problems.unwrap_or(false),
            order: if self.by_name.unwrap_or(false) {
                NodeOrder::Name
            } else {
                NodeOrder::ProblemsFirst
            },
        }
        .normalized())
    }
}

fn bad_query(e: impl std::fmt::Display) -> ApiError {
    error(StatusCode::BAD_REQUEST, format!("query: {e}"))
}

async fn ask(
    state: &AppState,
    params: Result<Query<StatusParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Answer, ApiError> {
    let Query(params) = params.map_err(bad_query)?;
    let query = params.query()?;
    state
        .status(&query, STATUS_TIMEOUT)
        .await
        .map_err(|e| unanswered(state, e))
}

fn role_header(role: &'static str) -> [(&'static str, HeaderValue); 1] {
    [("x-skos-role", HeaderValue::from_static(role))]
}

async fn status(
    State(state): State<Arc<AppState>>,
    params: Result<Query<StatusParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let answer = match ask(&state, params).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let code = if answer.status.is_some() {
        StatusCode::OK
    } else {
        // The coordinator refused the query.
        StatusCode::BAD_REQUEST
    };
    (
        code,
        role_header(answer.role),
        [(header::CONTENT_TYPE, "application/json")],
        answer.body,
    )
        .into_response()
}

async fn alerts(
    State(state): State<Arc<AppState>>,
    params: Result<Query<StatusParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match ask(&state, params).await {
        Ok(Answer {
            status: Some(s),
            role,
            ..
        }) => (
            role_header(role),
            Json(json!({
                "generated_at": skos_core::timefmt::format(&s.generated_at),
                "total": s.summary.open_alerts,
                "alerts": s.open_alerts,
            })),
        )
            .into_response(),
        Ok(a) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            a.body,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn actions(
    State(state): State<Arc<AppState>>,
    params: Result<Query<StatusParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match ask(&state, params).await {
        Ok(Answer {
            status: Some(s),
            role,
            ..
        }) => (
            role_header(role),
            Json(json!({
                "generated_at": skos_core::timefmt::format(&s.generated_at),
                "held": s.summary.recent_actions,
                "actions": s.recent_actions,
                "open_circuits": s.open_circuits,
            })),
        )
            .into_response(),
        Ok(a) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            a.body,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// The query string of `/api/v1/audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditParams {
    /// Records whose `seq` is above this; none: the last `limit` records.
    after: Option<u64>,
    /// At most this many (1 to [`MAX_AUDIT_PAGE`]).
    limit: Option<usize>,
}

fn page_of(records: Vec<Value>, more: bool, after: Option<u64>) -> Response {
    let next = records
        .last()
        .and_then(|r| r["seq"].as_u64())
        .or(after)
        .unwrap_or(0);
    Json(json!({ "records": records, "next_after": next, "more": more })).into_response()
}

fn parsed(records: Vec<Record>) -> Vec<Value> {
    records
        .iter()
        .filter_map(|r| serde_json::from_str(&r.json).ok())
        .collect()
}

async fn audit(
    State(state): State<Arc<AppState>>,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return bad_query(e).into_response(),
    };
    let limit = params.limit.unwrap_or(DEFAULT_AUDIT_PAGE);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit: 1 to {MAX_AUDIT_PAGE}"),
        )
        .into_response();
    }
    let Some(after) = params.after else {
        return page_of(parsed(state.feed.tail(limit)), false, None);
    };
    let (held, covered) = state.feed.after(after, limit + 1);
    if covered {
        let more = held.len() > limit;
        let records = parsed(held.into_iter().take(limit).collect());
        return page_of(records, more, Some(after));
    }
    // Older than what is held: the file is read; the stream is not (its
    // older records: `skos audit tail -n N`).
    match &state.feed.source {
        AuditSource::File(path) => {
            let path = path.clone();
            match tokio::task::spawn_blocking(move || {
                audit_follow::read_file_after(&path, after, limit)
            })
            .await
            {
                Ok(Ok((records, more))) => page_of(records, more, Some(after)),
                Ok(Err(e)) => {
                    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            }
        }
        AuditSource::JetStream(..) => error(
            StatusCode::GONE,
            format!(
                "records up to {} are not held by this server (it keeps the last {}); read older ones with skos audit tail -n N",
                state.feed.oldest().unwrap_or(0).saturating_sub(1),
                crate::feed::RING
            ),
        )
        .into_response(),
    }
}

/// The query string of `/api/v1/events`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventParams {
    /// Comma-separated event types (`alert,verification`); none: all.
    types: Option<String>,
    /// Replay the held records after this `seq` first (also the
    /// `Last-Event-ID` header, which a reconnecting browser sends).
    after: Option<u64>,
}

/// Server-sent events: each audit record as it is written, `event:` its
/// type, `id:` its seq, `data:` the record. A stream that falls behind is
/// sent a `lagged` event with how many it missed.
async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return bad_query(e).into_response(),
    };
    let types: Option<Vec<String>> = params.types.map(|t| {
        t.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let after = params.after.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    });
    // Subscribed before the replay is read: nothing falls between.
    let rx = state.feed.subscribe();
    let replay = after
        .map(|a| state.feed.after(a, crate::feed::RING).0)
        .unwrap_or_default();
    let stream = event_stream(rx, replay, types, state.closing.clone());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn to_event(r: &Record) -> Event {
    Event::default()
        .event(r.event_type.clone())
        .id(r.seq.to_string())
        .data(&*r.json)
}

fn event_stream(
    rx: broadcast::Receiver<Record>,
    replay: Vec<Record>,
    types: Option<Vec<String>>,
    closing: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let last = replay.last().map(|r| r.seq).unwrap_or(0);
    let wanted = move |r: &Record| types.as_ref().is_none_or(|t| t.contains(&r.event_type));
    let replay: std::collections::VecDeque<Record> = replay.into();
    futures::stream::unfold(
        (rx, replay, last, closing, wanted),
        |(mut rx, mut replay, mut last, mut closing, wanted)| async move {
            loop {
                if let Some(r) = replay.pop_front() {
                    if wanted(&r) {
                        return Some((Ok(to_event(&r)), (rx, replay, last, closing, wanted)));
                    }
                    continue;
                }
                if *closing.borrow() {
                    return None;
                }
                let got = tokio::select! {
                    r = rx.recv() => r,
                    _ = closing.changed() => return None,
                };
                match got {
                    Ok(r) if r.seq <= last => continue,
                    Ok(r) => {
                        last = r.seq;
                        if wanted(&r) {
                            return Some((Ok(to_event(&r)), (rx, replay, last, closing, wanted)));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let e = Event::default()
                            .event("lagged")
                            .data(json!({ "missed": n }).to_string());
                        return Some((Ok(e), (rx, replay, last, closing, wanted)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    )
}

/// Ask the coordinator `req`, and answer as the API does: `ok` with the
/// reply, the refusal's status code (400 invalid, 404 not found, 409
/// conflict) with its reason, or 503 when no coordinator answers.
async fn control(state: &AppState, req: ControlRequest, ok: StatusCode) -> Response {
    match state.control(&req, STATUS_TIMEOUT).await {
        Ok(reply) => {
            let code = match reply.refusal {
                None if reply.error.is_none() => ok,
                Some(Refusal::NotFound) => StatusCode::NOT_FOUND,
                Some(Refusal::Conflict) => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            (code, Json(reply)).into_response()
        }
        Err(e) => unanswered(state, e).into_response(),
    }
}

/// Every silence the coordinator keeps.
async fn silences(State(state): State<Arc<AppState>>) -> Response {
    control(&state, ControlRequest::SilenceList, StatusCode::OK).await
}

/// Add a silence (the body is a `SilenceSpec`); needs the token.
async fn silence_add(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<skos_core::silence::SilenceSpec>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(e) = writable(state.token.as_ref(), &headers) {
        return e.into_response();
    }
    let Json(spec) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")).into_response(),
    };
    control(
        &state,
        ControlRequest::SilenceAdd { silence: spec },
        StatusCode::CREATED,
    )
    .await
}

/// Who asks a write that has no body (`?by=`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ByParams {
    by: Option<String>,
    force: Option<bool>,
}

/// Expire a silence now (`?by=WHO`, default `http`); needs the token.
async fn silence_expire(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<Query<ByParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = writable(state.token.as_ref(), &headers) {
        return e.into_response();
    }
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return bad_query(e).into_response(),
    };
    let by = params.by.unwrap_or_else(|| "http".into());
    control(
        &state,
        ControlRequest::SilenceExpire { id, by },
        StatusCode::OK,
    )
    .await
}

/// Forget a node that left the fleet (`?by=WHO&force=true`); needs the
/// token.
async fn node_forget(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(node): Path<String>,
    params: Result<Query<ByParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = writable(state.token.as_ref(), &headers) {
        return e.into_response();
    }
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return bad_query(e).into_response(),
    };
    let node = match NodeName::parse(&node) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("node: {e}")).into_response(),
    };
    control(
        &state,
        ControlRequest::NodeForget {
            node,
            by: params.by.unwrap_or_else(|| "http".into()),
            force: params.force.unwrap_or(false),
        },
        StatusCode::OK,
    )
    .await
}

/// The plans waiting for approval.
async fn approvals(State(state): State<Arc<AppState>>) -> Response {
    control(&state, ControlRequest::ApprovalList, StatusCode::OK).await
}

/// Approve a plan waiting for approval (`?by=WHO`); needs the token.
async fn approve(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<Query<ByParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    decide(&state, &headers, id, params, true).await
}

/// Deny a plan waiting for approval (`?by=WHO`); needs the token.
async fn deny(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<Query<ByParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    decide(&state, &headers, id, params, false).await
}

async fn decide(
    state: &AppState,
    headers: &HeaderMap,
    id: String,
    params: Result<Query<ByParams>, axum::extract::rejection::QueryRejection>,
    approve: bool,
) -> Response {
    if let Err(e) = writable(state.token.as_ref(), headers) {
        return e.into_response();
    }
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return bad_query(e).into_response(),
    };
    let by = params.by.unwrap_or_else(|| "http".into());
    let req = if approve {
        ControlRequest::Approve { id, by }
    } else {
        ControlRequest::Deny { id, by }
    };
    control(state, req, StatusCode::OK).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_need_the_token_and_are_off_without_one() {
        let mut h = HeaderMap::new();
        assert_eq!(writable(None, &h).unwrap_err().code, StatusCode::FORBIDDEN);
        let t = Token::new("0123456789abcdef").unwrap();
        assert_eq!(
            writable(Some(&t), &h).unwrap_err().code,
            StatusCode::UNAUTHORIZED
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef"),
        );
        assert!(writable(Some(&t), &h).is_ok());
    }
}
